"""The identity_providers section: defaults, role maps, and every check with the line and key it names."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.settings.loader import parse_settings
from gateway.settings.schema import DEFAULT_ID_TOKEN_ALGORITHMS, DEFAULT_MFA_AMR

TOP = "public_url: https://auth.example.com\nidentity_providers:\n"
IDP = "  - name: corp\n    issuer: https://idp.example.com\n    client_id: gateway\n    client_secret: s\n"


def test_defaults_fail_closed() -> None:
    (idp,) = parse_settings(TOP + IDP).identity_providers
    assert idp.provisioning == "preprovisioned"
    assert idp.trust_mfa is False
    assert idp.link_by_email is False
    assert idp.allowed_algorithms == DEFAULT_ID_TOKEN_ALGORITHMS
    assert "none" not in idp.allowed_algorithms
    assert idp.mfa_amr == DEFAULT_MFA_AMR
    assert idp.auth_method == "client_secret_basic"
    assert idp.label == "corp"


def test_a_full_provider_loads() -> None:
    text = (
        TOP
        + IDP
        + "    display_name: Corp SSO\n"
        + "    provisioning: jit\n"
        + "    link_by_email: true\n"
        + "    role_map: {admins: admin, eng: [dev, reader]}\n"
        + "    email_domains: [corp.example.com, Example.ORG]\n"
        + "    trust_mfa: true\n"
        + "    mfa_acr: ['urn:okta:loa:2fa:any']\n"
        + "    allowed_algorithms: [ES256]\n"
        + "    clock_skew: 30s\n"
        + "    timeout: 5s\n"
        + "    userinfo: true\n"
        + "    token_endpoint_auth: client_secret_post\n"
        + "    extra_params: {prompt: select_account}\n"
    )
    (idp,) = parse_settings(text).identity_providers
    assert idp.label == "Corp SSO"
    assert idp.roles_for(("eng", "admins", "other")) == ("dev", "reader", "admin")
    assert (float(idp.clock_skew), float(idp.timeout)) == (30.0, 5.0)
    assert idp.auth_method == "client_secret_post"
    assert idp.extra_params == {"prompt": "select_account"}


def test_a_public_client_needs_no_secret() -> None:
    text = TOP + "  - {name: corp, issuer: 'https://idp.example.com', client_id: g}\n"
    assert parse_settings(text).identity_providers[0].auth_method == "none"


@pytest.mark.parametrize(
    ("extra", "where", "message"),
    [
        ("    allowed_algorithms: [none]\n", "allowed_algorithms[0]", '"none" is not allowed'),
        ("    allowed_algorithms: [HS256]\n", "allowed_algorithms[0]", '"HS256" is not allowed'),
        ("    allowed_algorithms: []\n", "allowed_algorithms", "at least one algorithm"),
        ("    token_endpoint_auth: none\n", "token_endpoint_auth", "a client_secret is set"),
        ("    trust_mfa: true\n    mfa_amr: []\n", "trust_mfa", "needs mfa_amr or mfa_acr"),
        ("    link_by_email: true\n", "link_by_email", "only applies to provisioning: jit"),
        ("    clock_skew: 10m\n", "clock_skew", "between 0 and 5m"),
        ("    timeout: 0\n", "timeout", "greater than 0"),
        ("    role_map: {admins: 'two words'}\n", "role_map.admins", "invalid role name"),
        ("    email_domains: ['*.example.com']\n", "email_domains[0]", "is not a domain name"),
        ("    extra_params: {state: fixed}\n", "extra_params.state", "set by the gateway itself"),
        (
            "    extra_params: {redirect_uri: 'https://evil'}\n",
            "extra_params.redirect_uri",
            "set by the gateway",
        ),
        ("    provisioning: automatic\n", "provisioning", "expected one of jit, preprovisioned"),
    ],
)
def test_unsafe_or_inconsistent_settings_are_refused(extra: str, where: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(TOP + IDP + extra)
    report = str(info.value)
    assert f"identity_providers[0] (name: corp).{where}" in report, report
    assert message in report, report


def test_a_secret_is_required_for_client_secret_methods() -> None:
    text = (
        TOP
        + "  - {name: corp, issuer: 'https://idp.example.com', client_id: g, token_endpoint_auth: client_secret_basic}\n"
    )
    with pytest.raises(ConfigError, match=r"client_secret: is required"):
        parse_settings(text)


def test_an_email_domain_routes_to_one_provider_only() -> None:
    second = IDP.replace("name: corp", "name: other") + "    email_domains: [Corp.Test]\n"
    with pytest.raises(ConfigError, match="already routes to identity provider corp"):
        parse_settings(TOP + IDP + "    email_domains: [corp.test]\n" + second)
