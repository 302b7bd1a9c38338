"""Authorization: casbin RBAC policies, their compiled index, decisions and the policy store."""
