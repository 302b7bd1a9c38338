"""The complete schema: importing this module registers every table module on ``Base.metadata``.

Alembic's environment and the schema-drift test import it, so a table added to any domain module is
seen by autogenerate and by the check that every model change has a migration.
"""

from __future__ import annotations

from gateway.audit import models as audit_models
from gateway.authz import models as authz_models
from gateway.backup import models as backup_models
from gateway.crypto import models as crypto_models
from gateway.identity import models as identity_models
from gateway.identity.oidc import models as oidc_models
from gateway.machine import models as machine_models
from gateway.observe import models as observe_models
from gateway.privacy import models as privacy_models
from gateway.response import models as response_models
from gateway.store.models import Base

__all__ = ["Base", "metadata"]

metadata = Base.metadata
_DOMAINS = (
    identity_models,
    audit_models,
    authz_models,
    crypto_models,
    oidc_models,
    observe_models,
    privacy_models,
    backup_models,
    response_models,
    machine_models,
)
