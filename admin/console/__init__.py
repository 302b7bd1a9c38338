"""The admin console: server-rendered pages on the admin listener, driving the same JSON API.

Reading: each page's GET handler calls the same function as its ``/api/...`` twin and renders the
result with Jinja (``admin/templates/console/``). Changing: every form on a page is submitted by
``console.js`` as JSON to the documented API endpoint named in its ``data-api`` attribute, so a
script and the console can never diverge, and the admin API's CSRF defence (JSON bodies only, own
origin) covers the console without a second mechanism. Pages answer a missing sign-in or a stale
second factor with a redirect to the gateway's page that fixes it.

One module per section (overview, users, policies, audit, incidents, privacy, machine clients, keys, settings); each exports
``HANDLERS`` (its pages and its API calls), collected here. The Response section has two:
``incident_cases`` (the records' pages and ``/api/incident-cases``, the twin of ``gateway incident case``)
and ``lockdown`` (the page of the switch whose API is ``admin/lockdown.py``).
"""

from __future__ import annotations

from admin.console.audit import HANDLERS as AUDIT
from admin.console.incident_cases import HANDLERS as INCIDENT_CASES
from admin.console.incidents import HANDLERS as INCIDENTS
from admin.console.keys import HANDLERS as KEYS
from admin.console.lockdown import HANDLERS as LOCKDOWN
from admin.console.machine import HANDLERS as MACHINE
from admin.console.overview import HANDLERS as OVERVIEW
from admin.console.policies import HANDLERS as POLICIES
from admin.console.privacy import HANDLERS as PRIVACY
from admin.console.render import error_page, static_router, template_config
from admin.console.settings import HANDLERS as SETTINGS
from admin.console.users import HANDLERS as USERS

__all__ = ["HANDLERS", "error_page", "static_router", "template_config"]

HANDLERS = (
    *OVERVIEW,
    *USERS,
    *POLICIES,
    *INCIDENTS,
    *INCIDENT_CASES,
    *LOCKDOWN,
    *PRIVACY,
    *AUDIT,
    *MACHINE,
    *KEYS,
    *SETTINGS,
)
