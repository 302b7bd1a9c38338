"""The model file ships as package data, matches policies/model.conf, and builds a casbin enforcer."""

from __future__ import annotations

from pathlib import Path

from gateway.authz.model import casbin_enforcer, model_text
from gateway.authz.rules import PolicyRules, parse_policy

ROOT = Path(__file__).resolve().parents[3]


def test_model_files_are_identical() -> None:
    assert (ROOT / "gateway" / "authz" / "model.conf").read_bytes() == (
        ROOT / "policies" / "model.conf"
    ).read_bytes()
    assert model_text() == (ROOT / "policies" / "model.conf").read_text(encoding="utf-8")
    assert "methodMatch(r.act, p.act)" in model_text()
    # Not casbin's keyMatch2 (which left "/admin" outside "/admin/*"): the gateway's own function.
    assert "pathMatch(r.obj, p.obj)" in model_text()
    assert "keyMatch2(r.obj" not in model_text()


def test_enforcer_uses_path_match() -> None:
    enforcer = casbin_enforcer(
        parse_policy("p, dev, app, /*, *, allow\np, dev, app, /admin/*, *, deny\ng, user:dave, dev\n")
    )
    for path in ("/admin", "/admin/", "/admin/users"):
        assert not enforcer.enforce("user:dave", "app", path, "GET"), path
    for path in ("/", "/administrator", "/adm", "/x/admin"):
        assert enforcer.enforce("user:dave", "app", path, "GET"), path


def test_enforcer_uses_method_match_and_roles() -> None:
    enforcer = casbin_enforcer(
        parse_policy(
            "p, editor, wiki, /pages/:page, GET|HEAD, allow\n"
            "p, user:eve, wiki, /pages/secret, *, deny\n"
            "g, user:eve, editor\ng, user:bob, editor\n"
        )
    )
    assert enforcer.enforce("user:bob", "wiki", "/pages/home", "HEAD")
    assert not enforcer.enforce("user:bob", "wiki", "/pages/home", "POST")
    assert not enforcer.enforce("user:bob", "grafana", "/pages/home", "GET")
    assert not enforcer.enforce("user:eve", "wiki", "/pages/secret", "GET")


def test_empty_policy_denies() -> None:
    assert not casbin_enforcer(PolicyRules()).enforce("user:a", "wiki", "/", "GET")


def test_hierarchy_limit_can_be_raised() -> None:
    links = "".join(f"g, r{i}, r{i + 1}\n" for i in range(10))
    rules = parse_policy("p, r10, app, /*, *, allow\n" + links)
    assert not casbin_enforcer(rules).enforce("r0", "app", "/x", "GET")
    assert casbin_enforcer(rules, max_hierarchy_level=11).enforce("r0", "app", "/x", "GET")
    assert casbin_enforcer(rules).enforce("r1", "app", "/x", "GET")
