"""The casbin model (``model.conf``, shipped as package data) and a reference casbin enforcer.

casbin is the reference semantics: :class:`~gateway.authz.index.PolicyIndex` must answer exactly as
the enforcer built here. Tests, the benchmark and ``gateway policy`` use it to check that.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import casbin
from casbin.persist.adapters.string_adapter import StringAdapter
from casbin.rbac.default_role_manager import RoleManager

from gateway.authz.index import MAX_HIERARCHY_LEVEL
from gateway.authz.rules import PolicyRules, method_match, path_match

__all__ = ["casbin_enforcer", "model_text"]


@cache
def model_text() -> str:
    """The text of ``gateway/authz/model.conf`` (identical to ``policies/model.conf``)."""
    return files("gateway.authz").joinpath("model.conf").read_text(encoding="utf-8")


def casbin_enforcer(rules: PolicyRules, *, max_hierarchy_level: int = MAX_HIERARCHY_LEVEL) -> casbin.Enforcer:
    """A ``casbin.Enforcer`` holding ``rules`` in memory, with ``pathMatch`` and ``methodMatch`` registered.

    The rules go through casbin's own CSV loader (``StringAdapter``), so casbin reads what we write.

    Args:
        rules: the policy.
        max_hierarchy_level: the role manager's limit (casbin's default); raise it by one to compare
            a principal *set* through a synthetic subject linked to each of its principals.

    Returns:
        The enforcer; ``enforcer.enforce(sub, dom, obj, act)`` is the reference answer.
    """
    model = casbin.Enforcer.new_model(text=model_text())
    text = rules.to_csv()
    enforcer = casbin.Enforcer(model, StringAdapter(text) if text else None)
    enforcer.add_function("pathMatch", path_match)
    enforcer.add_function("methodMatch", method_match)
    if max_hierarchy_level != MAX_HIERARCHY_LEVEL:
        enforcer.set_role_manager(RoleManager(max_hierarchy_level=max_hierarchy_level))
        enforcer.build_role_links()
    return enforcer
