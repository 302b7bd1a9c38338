"""Security events: the audit trail (and, later, access logs, sinks and threat detection)."""
