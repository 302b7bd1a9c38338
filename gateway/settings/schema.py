"""The shape of the configuration file, as frozen msgspec structs.

Everything here is declarative: the loader (``gateway.settings.loader``) turns YAML into these
structs, resolving ``${env:NAME}`` / ``${file:PATH}`` secrets and reporting errors by key path and
line. Derived, normalised views (canonical hosts, parsed upstream URLs) are computed by the consumers
that need them (the router, the upstream pools), so this module stays a plain description.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

__all__ = [
    "DEFAULT_ACCESS_TOKEN_ALGORITHMS",
    "DEFAULT_ID_TOKEN_ALGORITHMS",
    "DEFAULT_MFA_AMR",
    "DEFAULT_PURPOSES",
    "DEFAULT_TEMPLATES",
    "TEMPLATE_PLACEHOLDERS",
    "AccessTokens",
    "ActiveHealthCheck",
    "AdminSettings",
    "AssertionSettings",
    "AuditSettings",
    "AuthMethod",
    "BackupSettings",
    "ByteSize",
    "Duration",
    "IdentityHeaderNames",
    "IdentityProvider",
    "Limits",
    "LockdownSettings",
    "LogSink",
    "LoggingSettings",
    "MailTemplate",
    "MfaPolicy",
    "MfaSettings",
    "NetworkRule",
    "NotifySettings",
    "PassiveHealthCheck",
    "PasswordSettings",
    "PgBackRestSettings",
    "PolicySettings",
    "PrivacyContact",
    "PrivacySettings",
    "Purpose",
    "RegulationSettings",
    "RetentionSettings",
    "Route",
    "ServerSettings",
    "SessionSettings",
    "Settings",
    "SmtpSettings",
    "StateSettings",
    "StorageSettings",
    "ThreatRule",
    "ThreatSettings",
    "Timeouts",
    "TlsSettings",
    "TokenIntrospection",
    "TokenSettings",
    "TotpSettings",
    "TracingSettings",
    "TravelRule",
    "UpstreamTls",
    "WebAuthnSettings",
]


class Duration(float):
    """Seconds. Written in the file as a number of seconds or ``500ms``, ``30s``, ``15m``, ``12h``, ``7d``."""


class ByteSize(int):
    """Bytes. Written as a number or ``64KiB``, ``10MiB``, ``1GiB`` (also kB/MB/GB, powers of 10)."""


class _Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base: immutable, and an unknown key is an error (a typo must not silently do nothing).

    Subclasses repeat ``frozen=True``: msgspec inherits it, but type checkers (dataclass_transform) do not.
    """


class TlsSettings(_Config, frozen=True):
    certificate: str
    key: str
    min_version: Literal["1.2", "1.3"] = "1.3"
    # HTTP/2 beside HTTP/1.1 (chosen by ALPN). With it, a connection that completed the TLS handshake
    # and sent nothing is never closed (the server waits without a timeout to see which protocol
    # comes) and holds one of server.max_connections until the client leaves; false: HTTP/1.1 only,
    # and server.header_timeout closes idle connections too.
    http2: bool = True


class StorageSettings(_Config, frozen=True):
    # None: a SQLite file inside data_dir (the embedded single-node default).
    url: str | None = None
    pool_size: int = 10
    echo: bool = False


class StateSettings(_Config, frozen=True):
    # None: the embedded default, one node (see ``embedded``). redis://, rediss://, redis+sentinel://,
    # redis+cluster:// for several replicas.
    redis_url: str | None = None
    # Without redis_url: "file" = <data_dir>/state.db, shared by every process on the node (workers,
    # admin listener, CLI); "memory" = inside one gateway process only (benchmarks; refused with
    # several workers or an admin listener, which could not see its sessions).
    embedded: Literal["file", "memory"] = "file"
    # Prefix of every key and channel: deployments sharing one Redis database must each use their own,
    # or one's "sign out everywhere" would end the other's sessions of the same user id.
    namespace: str = "gw:"


class SessionSettings(_Config, frozen=True):
    idle_timeout: Duration = Duration(30 * 60)
    lifetime: Duration = Duration(12 * 3600)
    cookie_name: str = "__Host-gateway_session"
    # Only for plain-HTTP development on localhost; never in production.
    insecure_cookies: bool = False


class TokenSettings(_Config, frozen=True):
    """The gateway's own API tokens for service accounts (``gateway token create``)."""

    # Every token expires; this is the longest lifetime a token may be given.
    max_lifetime: Duration = Duration(365 * 86400)


class PasswordSettings(_Config, frozen=True):
    # argon2id cost; the defaults are OWASP's minimum (m=19 MiB, t=2, p=1). Hashes made with other
    # parameters are re-hashed at the next successful sign-in.
    memory_kib: int = 19456
    time_cost: int = 2
    parallelism: int = 1
    # Hashes computed at once per worker (each in a thread): a burst of sign-ins queues here instead
    # of starving proxied traffic of CPU.
    max_concurrent_hashes: int = 2
    min_length: int = 12


class RegulationSettings(_Config, frozen=True):
    # Consecutive failed sign-in steps (password and second factor together) per canonical account.
    # Each failure past `free_attempts` waits 2^(n - free_attempts) seconds (capped at lock_time);
    # `max_failures` in a row lock the account for `lock_time`. Far below NIST's ceiling of 100.
    free_attempts: int = 3
    max_failures: int = 10
    lock_time: Duration = Duration(15 * 60)
    # Per client address (an IPv6 one by its /64): failed password sign-ins (and made-up invitation
    # links, rejected back-channel logout tokens, sign-ins a provider refused), and passkey challenges
    # and provider sign-ins started, per `address_window`; past either, that work is refused (429) until
    # the window ends, before any password is hashed (gateway/threat/attempts.py). 0 turns a limit off.
    address_failures: int = 30
    address_challenges: int = 120
    # Opaque access tokens an identity provider's introspection called inactive (or could not read),
    # per address and window: each unknown token is a call to the provider (an attack run made one per
    # request with random tokens, which a provider that rate-limits the gateway would answer by
    # refusing everyone's tokens).
    address_introspections: int = 60
    address_window: Duration = Duration(60)


class TotpSettings(_Config, frozen=True):
    # Shown in authenticator apps next to the account name.
    issuer: str = "Gateway"


class WebAuthnSettings(_Config, frozen=True):
    # None: the host of public_url. Passkeys are bound to it, so pick it once (a parent domain such as
    # example.com lets routes on sub-domains share passkeys).
    rp_id: str | None = None
    rp_name: str = "Gateway"
    user_verification: Literal["required", "preferred", "discouraged"] = "preferred"
    # Sign in with a user-verifying passkey alone (counts as two factors).
    passwordless: bool = True


class MfaSettings(_Config, frozen=True):
    totp: TotpSettings = TotpSettings()
    webauthn: WebAuthnSettings = WebAuthnSettings()
    recovery_codes: int = 10
    # Adding or removing a factor, new recovery codes, or a password change need a second factor
    # used within this time.
    reauth_max_age: Duration = Duration(5 * 60)


# Signature algorithms an ID token may use by default. Asymmetric only: an HMAC "key" would have to be
# the client secret (shared with the provider) or, in the classic confusion attack, a public key.
DEFAULT_ID_TOKEN_ALGORITHMS = ("RS256", "ES256", "PS256")
# RFC 8176 `amr` values that prove more than a password (multiple factors, one-time code, key).
DEFAULT_MFA_AMR = ("mfa", "otp", "hwk", "swk")
# Signature algorithms a provider's JWT access token may use by default (RFC 9068 §4: asymmetric).
DEFAULT_ACCESS_TOKEN_ALGORITHMS = ("RS256", "ES256", "PS256", "EdDSA")


class TokenIntrospection(_Config, frozen=True):
    """How the gateway asks the provider about an opaque access token (RFC 7662), as a client."""

    # None: the provider's own client_id / client_secret (the sign-in client). client_secret_basic.
    client_id: str | None = None
    # Write ${env:…} or ${file:…}, never the secret itself.
    client_secret: str | None = None


class AccessTokens(_Config, frozen=True):
    """The provider's access tokens, accepted on routes with ``auth: [bearer]`` (gateway/machine/provider_*)."""

    # The gateway's identifier at the provider (RFC 8707 resource / the token's `aud`); required.
    audience: str
    algorithms: tuple[str, ...] = DEFAULT_ACCESS_TOKEN_ALGORITHMS
    # RFC 9068 §4 wants the header typ at+jwt; true also takes plain "JWT" (providers older than it).
    allow_jwt_typ: bool = False
    # exp and nbf tolerance (a short-lived token must die close to its exp).
    clock_skew: Duration = Duration(5)
    # Opaque (non-JWT) tokens are asked about at the provider's introspection_endpoint; None: refused.
    introspection: TokenIntrospection | None = None
    # An introspection answer is trusted this long at most (and never past the token's exp): a token
    # revoked at the provider stops working within it. Refusals are remembered for negative_ttl.
    cache_ttl: Duration = Duration(60)
    negative_ttl: Duration = Duration(5)
    cache_size: int = 10_000
    # A token of a person (sub is not the client): refuse = only client-credentials tokens; linked = the
    # account an OIDC sign-in linked to (provider, sub), principal user:<name> (no roles, no
    # "authenticated"); no linked account, or a disabled one: refused.
    users: Literal["linked", "refuse"] = "refuse"


class IdentityProvider(_Config, frozen=True):
    """An OpenID Connect provider people sign in through (docs/oidc.md has examples per vendor)."""

    # [a-z0-9][a-z0-9_-]*: in URLs (/.gateway/oidc/<name>/callback), logs and identity links.
    name: str
    # Exactly as the provider's discovery document and ID tokens spell it.
    issuer: str
    client_id: str
    # Write ${env:…} or ${file:…}, never the secret itself. None: a public client (PKCE only).
    client_secret: str | None = None
    # Shown on the sign-in button; the name when empty.
    display_name: str = ""
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    # Claim (ID token, or userinfo) listing the person's groups; they become principals
    # group:<provider>:<name>.
    groups_claim: str = "groups"
    # Group → role(s) granted in sessions signed in through this provider (on top of local roles).
    role_map: dict[str, str | tuple[str, ...]] = msgspec.field(default_factory=dict)
    # Claim proposing the username of an account created just in time (never used to find one).
    username_claim: str = "preferred_username"
    # jit: create an account at the first sign-in. preprovisioned: only accounts an admin created;
    # the first sign-in links the account whose email is the provider's *verified* email.
    provisioning: Literal["jit", "preprovisioned"] = "preprovisioned"
    # jit only: link an existing account whose email equals the provider's verified email, instead of
    # refusing the sign-in. Only for providers that verify email addresses themselves.
    link_by_email: bool = False
    # Claims every sign-in must carry with exactly this value (a list claim must contain it), e.g.
    # {hd: example.com} for Google Workspace, {tid: <tenant id>} for Entra ID.
    required_claims: dict[str, str] = msgspec.field(default_factory=dict)
    # A login hint (an email typed on the sign-in page) in one of these domains goes to this provider.
    email_domains: tuple[str, ...] = ()
    # Count the provider's own MFA as the second factor when its `amr` or `acr` claim proves it.
    trust_mfa: bool = False
    mfa_amr: tuple[str, ...] = DEFAULT_MFA_AMR
    mfa_acr: tuple[str, ...] = ()
    allowed_algorithms: tuple[str, ...] = DEFAULT_ID_TOKEN_ALGORITHMS
    # How far the provider's clock may be from ours (exp, iat, nbf).
    clock_skew: Duration = Duration(60)
    # Each request to the provider (discovery, keys, token, userinfo) gives up after this.
    timeout: Duration = Duration(10)
    # An unknown key id re-fetches the provider's keys at most this often.
    jwks_cooldown: Duration = Duration(30)
    # Keys older than this are fetched again before the next token is checked: a key the provider
    # removed (leaked, rotated out) stops verifying within this time.
    jwks_max_age: Duration = Duration(300)
    # Also read claims from the userinfo endpoint (for providers that keep groups out of the ID token).
    userinfo: bool = False
    # None: client_secret_basic with a secret, none (public client) without.
    token_endpoint_auth: Literal["client_secret_basic", "client_secret_post", "none"] | None = None
    # Extra authorization request parameters, e.g. {prompt: select_account} or {hd: example.com}.
    extra_params: dict[str, str] = msgspec.field(default_factory=dict)
    # Sign-out also ends the session at the provider (its end_session_endpoint), when it has one.
    rp_logout: bool = True
    # Also accept the provider's access tokens on bearer routes (None: only sign-ins).
    access_tokens: AccessTokens | None = None

    @property
    def label(self) -> str:
        """What the sign-in page calls this provider."""
        return self.display_name or self.name

    @property
    def auth_method(self) -> str:
        """How the gateway authenticates to the token endpoint."""
        if self.token_endpoint_auth is not None:
            return self.token_endpoint_auth
        return "client_secret_basic" if self.client_secret is not None else "none"

    def roles_for(self, groups: tuple[str, ...]) -> tuple[str, ...]:
        """The roles ``role_map`` grants for these groups, in the groups' order, without duplicates."""
        roles: list[str] = []
        for group in groups:
            mapped = self.role_map.get(group, ())
            for role in (mapped,) if isinstance(mapped, str) else mapped:
                if role not in roles:
                    roles.append(role)
        return tuple(roles)


class PolicySettings(_Config, frozen=True):
    # casbin CSV imported into the database when it holds no policy yet (the first start of a
    # deployment). From then on the database is the source of truth: `gateway policy import` replaces
    # it, with history. No file and no stored policy: every non-public request is denied.
    file: str | None = None
    # Decisions cached per worker (entries; each a few hundred bytes).
    cache_size: int = 100_000
    # How often a worker checks the stored policy version: the backstop for a lost broadcast.
    poll_interval: Duration = Duration(1)
    # Not ready once the policy could not be confirmed current for this long (database unreachable).
    max_staleness: Duration = Duration(300)


class AssertionSettings(_Config, frozen=True):
    # Lifetime of the X-Gateway-Assertion JWT; at most 5 minutes. Reused per session and route until
    # less than a fifth of it is left.
    ttl: Duration = Duration(300)
    # A rotated-out signing key stays in /.gateway/jwks.json this long, so tokens it signed still verify.
    grace: Duration = Duration(3600)
    # A new key is published this long before it signs anything, so upstreams caching the JWKS know it.
    publish_ahead: Duration = Duration(600)


class IdentityHeaderNames(_Config, frozen=True):
    # The names under which the upstream (and a forward-auth proxy) receives the verified identity,
    # for apps that already read X-Forwarded-User or Remote-User. A client-sent header of a configured
    # name is removed in every spelling, like X-Gateway-*. X-Gateway-Assertion and X-Gateway-Auth
    # keep their names.
    user: str = "X-Gateway-User"
    email: str = "X-Gateway-Email"
    roles: str = "X-Gateway-Roles"


class RouteIdentityHeaders(_Config, frozen=True):
    # One route's own names for the identity (Grafana reads X-WEBAUTH-USER, an app behind Apache
    # Remote-User): a name given here replaces the global identity_headers one for this route only;
    # a name not given is the global one. A client-sent header of any route's names is removed from
    # every request, whichever route it is for.
    user: str | None = None
    email: str | None = None
    roles: str | None = None

    def over(self, default: IdentityHeaderNames) -> IdentityHeaderNames:
        """The names this route sends the identity under, the global ``default`` filling the gaps."""
        return IdentityHeaderNames(
            user=default.user if self.user is None else self.user,
            email=default.email if self.email is None else self.email,
            roles=default.roles if self.roles is None else self.roles,
        )


class AdminSettings(_Config, frozen=True):
    # The admin API and console listen here, apart from the data plane. null: not served.
    listen: str | None = "127.0.0.1:9090"
    # Principals with this role (directly, through a group or through the policy's role hierarchy) are admins.
    role: str = "admin"
    # Admin actions need a second factor used within this time.
    reauth_max_age: Duration = Duration(15 * 60)
    # Destructive actions (reset a user's factors, revoke all their sessions, delete, restore or
    # replace the policy, lift a block) ask for the second factor again when it is older than this.
    destructive_reauth_max_age: Duration = Duration(5 * 60)
    # 2: a policy change proposed by one admin goes live only when another admin approves it.
    approvals: Literal[1, 2] = 1
    # A proposal not approved within this time expires.
    proposal_ttl: Duration = Duration(48 * 3600)
    # How long the decision sample that the policy what-if replays is kept.
    sample_retention: Duration = Duration(24 * 3600)
    # An invitation link (a new account's first password, chosen by the user) works this long, once.
    invitation_ttl: Duration = Duration(72 * 3600)


class AuditSettings(_Config, frozen=True):
    # How often a worker signs a checkpoint of the audit chain and sends it out of the database (the
    # sinks and <data_dir>/audit-checkpoints/), which is what makes a truncated trail detectable.
    checkpoint_interval: Duration = Duration(300)


class Timeouts(_Config, frozen=True):
    # To open a TCP (and TLS) connection to a target.
    connect: Duration = Duration(5)
    # Longest wait for the upstream once the request is sent: for the response headers and between
    # two reads of its body (nginx's proxy_read_timeout). A slow upload does not count against it.
    response: Duration = Duration(60)


class ActiveHealthCheck(_Config, frozen=True):
    path: str = "/"
    interval: Duration = Duration(10)
    timeout: Duration = Duration(2)
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    expected_status: tuple[int, int] = (200, 399)


class PassiveHealthCheck(_Config, frozen=True):
    # Consecutive connect failures or 5xx-free transport errors before a target is ejected.
    consecutive_failures: int = 5
    ejection_time: Duration = Duration(30)


class MfaPolicy(_Config, frozen=True):
    require: Literal["none", "required", "webauthn"] = "none"
    max_age: Duration | None = None


AuthMethod = Literal["session", "bearer"]


class UpstreamTls(_Config, frozen=True):
    """How the gateway speaks TLS to a route's https upstreams (mTLS: apps that only let the gateway in)."""

    # The client certificate (PEM, intermediates after it) and its key the gateway presents; both or neither.
    certificate: str | None = None
    key: str | None = None
    # CA bundle (PEM) the app's certificate must chain to; without it (and without a pin) the system CAs.
    ca_file: str | None = None
    # SHA-256 of the app's leaf certificate (hex, colons allowed). Alone it replaces the chain check
    # (self-signed apps); with ca_file both must hold.
    pin_sha256: str | None = None
    # SNI and the name verified in the certificate, when the upstream URL is an IP or another name.
    server_name: str | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    # Revocation lists (PEM) of the app certificate's CA: a certificate listed there is refused.
    # Needs the chain checked (not a pin alone); read again when the file changes.
    crl_file: str | None = None


class Route(_Config, frozen=True):
    name: str
    host: str
    upstreams: tuple[str, ...]
    path: str = "/"
    balance: Literal["round_robin", "least_outstanding"] = "round_robin"
    timeouts: Timeouts = Timeouts()
    websockets: bool = True
    # Origins (scheme://host[:port]) whose pages may open this route's WebSockets, beside the route's own
    # host; ["*"]: any. A handshake is sent with the visitor's cookie by any page of the same site (a
    # sibling app on *.example.com), so without this another app's script could drive this one's socket
    # as the visitor (cross-site WebSocket hijacking). A handshake without Origin (not a browser) passes.
    websocket_origins: tuple[str, ...] = ()
    preserve_host: bool = False
    public_paths: tuple[str, ...] = ()
    # "none" | "required" | "webauthn", or {require: …, max_age: 15m}; normalised by Route.mfa_policy.
    mfa: Literal["none", "required", "webauthn"] | MfaPolicy = "required"
    allow_path_params: bool = False
    # The app reads /Admin as /admin (IIS and ASP.NET, Express's and Spring's defaults, Windows file
    # serving): the gateway then routes, decides and forwards the path in lower case, and refuses a
    # segment ending in a dot or a space (IIS drops them: /admin. is /admin). All routes of a host agree.
    case_insensitive_paths: bool = False
    request_headers: dict[str, str] = msgspec.field(default_factory=dict)
    response_headers: dict[str, str] = msgspec.field(default_factory=dict)
    health_check: ActiveHealthCheck | None = None
    passive_health_check: PassiveHealthCheck = PassiveHealthCheck()
    max_body_size: ByteSize | None = None
    # TLS to the upstreams (client certificate, CA, pin, SNI); only with https:// upstreams.
    upstream_tls: UpstreamTls | None = None
    # How a request proves who it is: a session cookie (browsers), a bearer token (scripts, CI: the
    # gateway's API tokens, see gateway/machine/), or either. A request with a token on a route that
    # takes both is decided by the token alone.
    auth: tuple[AuthMethod, ...] = ("session",)
    # The names this route's app receives the identity under, where they differ from identity_headers.
    identity_headers: RouteIdentityHeaders | None = None
    # A browser's CORS preflight (OPTIONS with Origin and Access-Control-Request-Method, no body) goes
    # to the app without sign-in and without credentials, so a single-page app on another origin can
    # call this one; the request that follows is decided as any other.
    cors_preflight: bool = False

    @property
    def mfa_policy(self) -> MfaPolicy:
        return self.mfa if isinstance(self.mfa, MfaPolicy) else MfaPolicy(require=self.mfa)


class Limits(_Config, frozen=True):
    max_header_bytes: ByteSize = ByteSize(32 * 1024)
    max_body_size: ByteSize = ByteSize(1024**3)
    # The longest wait for the next piece of a request body (nginx's client_body_timeout): a client
    # that stops sending mid-body is answered 408 and its connection closed, instead of holding a
    # request slot for as long as it likes (a few hundred stalled uploads locked everyone out).
    body_timeout: Duration = Duration(30)
    # Upstream connections kept per worker (keep-alive pool).
    max_upstream_connections: int = 512


# Automatic answers a threat rule may give (see gateway/threat): an alert is always recorded.
# revoke_unfinished: the account's sessions still owing a second factor (a stolen password's), never
# the owner's finished ones.
ThreatResponse = Literal[
    "alert",
    "webhook",
    "block_ip",
    "lock_account",
    "revoke_session",
    "revoke_sessions",
    "revoke_unfinished",
    "step_up",
    "lockdown",
]


class ThreatRule(_Config, frozen=True):
    """One detection rule: fires once per ``window`` when ``count`` signals are reached."""

    enabled: bool = True
    count: int = 10
    window: Duration = Duration(300)
    responses: tuple[ThreatResponse, ...] = ("alert",)
    # How long a block_ip response keeps the address out.
    block_for: Duration = Duration(3600)


class TravelRule(ThreatRule, frozen=True):
    """Impossible travel between two sign-ins of one account (needs ``threat.geoip_database``)."""

    max_speed_kmh: float = 1000.0
    # Jumps shorter than this are ignored: GeoIP places addresses tens of km off.
    min_distance_km: float = 500.0


class NetworkRule(ThreatRule, frozen=True):
    """A rule that counts clients by a network wider than one subscriber: native IPv6 ones by a network
    wider than a /64, IPv4 ones by a network wider than one address."""

    # The network's prefix length (32-63): a site or a home line holds a /48 or /56 (RFC 6177), so a
    # sprayer with one rotates through 256 or 65,536 /64s, each below the per-address rule.
    prefix: int = 48
    # The IPv4 network's prefix length (16-31), or null for IPv6 only: a sprayer renting a /24 of a
    # hosting provider rotates through 256 addresses, each below the per-address rule.
    prefix_v4: int | None = 24


class ThreatSettings(_Config, frozen=True):
    """Real-time threat detection; counters live in the fast state, so replicas count together."""

    enabled: bool = True
    # Failed sign-in steps (password or second factor) against one account.
    brute_force: ThreatRule = ThreatRule(count=10, window=Duration(300))
    # Failed sign-ins from one address over this many *different* accounts (spraying, stuffing).
    spraying: ThreatRule = ThreatRule(count=10, window=Duration(600), responses=("alert", "block_ip"))
    # The same over every /64 of one IPv6 network (spraying_network.prefix, a /48 by default), and every
    # address of one IPv4 network (prefix_v4, a /24): a sprayer rotating through the /64s of its /56 or
    # /48, or the addresses of its /24. An alert by default, with a count four times the
    # address rule's: one site's network holds many honest people, so blocking it is a choice
    # (responses: [alert, block_ip]).
    spraying_network: NetworkRule = NetworkRule(count=40, window=Duration(600), responses=("alert",))
    # Failed second-factor attempts on one account (MFA fatigue / a stolen password being pushed): the
    # sessions that failed are a password's; ending the owner's finished ones too let a stolen password
    # alone sign the owner out every window (a re-attack run).
    mfa_failures: ThreatRule = ThreatRule(
        count=5, window=Duration(600), responses=("alert", "revoke_unfinished")
    )
    # Policy denials collected by one principal (user, or address without a session).
    reconnaissance: ThreatRule = ThreatRule(count=30, window=Duration(300), responses=("alert", "step_up"))
    # API tokens that are no token of this gateway's (unknown, expired, revoked, malformed) presented
    # from one address: guessing costs a database look-up per distinct guess. An alert by default: a
    # client whose token expired keeps sending it until someone renews it.
    token_guessing: ThreatRule = ThreatRule(count=30, window=Duration(300), responses=("alert",))
    # A session used from a new address AND a new User-Agent at once (count/window unused).
    session_hijack: ThreatRule = ThreatRule(count=1, responses=("alert", "revoke_session"))
    impossible_travel: TravelRule = TravelRule(count=1, window=Duration(86400))
    # Network-specific NAT64/SIIT prefixes (/96 each) clients may come through, besides the well-known
    # 64:ff9b::/96 and the local-use 64:ff9b:1::/48: their clients are counted and blocked by their IPv4
    # address, not by the /64 every client of the translator shares.
    nat64_prefixes: tuple[str, ...] = ()
    # Files of CIDRs (one per line, '#' comments), re-read when they change (threat-intel feeds).
    block_lists: tuple[str, ...] = ()
    block_list_poll: Duration = Duration(5)
    # A MaxMind-format (GeoLite2/GeoIP2 City) database; None disables impossible travel.
    geoip_database: str | None = None
    # JSON POSTed for each incident when a rule has the webhook response.
    webhook_url: str | None = None
    webhook_queue: int = 1000
    webhook_timeout: Duration = Duration(5)


class LockdownSettings(_Config, frozen=True):
    """Emergency lockdown (gateway/threat/lockdown.py): who still gets in, and what everyone else sees."""

    # The group (from an identity provider) or role (local, or through the policy's g lines) whose
    # members pass a lockdown with a WebAuthn factor of this session. None: nobody passes.
    break_glass_group: str | None = None
    # How long ago that WebAuthn factor may have been used.
    max_factor_age: Duration = Duration(12 * 3600)
    # The Retry-After of the 503 everyone else gets.
    retry_after: Duration = Duration(300)
    # The maintenance page's heading and text (also the JSON answer's message).
    title: str = "We'll be back soon"
    message: str = "This service is temporarily closed for maintenance. Please try again later."
    # Every worker re-reads the switch this often besides following its broadcast.
    refresh_interval: Duration = Duration(1)


class ServerSettings(_Config, frozen=True):
    workers: int = 1
    # Seconds in-flight requests get to finish on shutdown before workers are stopped.
    graceful_timeout: Duration = Duration(30)
    # Connections one worker holds open at once (granian's backpressure). Every open connection holds
    # one, an idle keep-alive one included, until header_timeout closes it; beyond it new connections
    # wait in the listen backlog. A per-client limit belongs to the proxy or load balancer in front.
    max_connections: int = 1024
    # How long a connection may take to send a request's head, and how long an idle keep-alive
    # connection is kept waiting for the next one (both the gateway's and the admin listener's).
    header_timeout: Duration = Duration(10)
    # Connections the kernel queues for the gateway's port before it accepts them (listen(2)).
    backlog: int = 1024

    @property
    def header_timeout_ms(self) -> int:
        """``header_timeout`` in the whole milliseconds granian takes."""
        return max(1, round(self.header_timeout * 1000))


class LogSink(_Config, frozen=True):
    """One destination of access-log and security events; which keys apply depends on ``type``.

    stdout: none. file: ``path``, ``max_bytes``, ``backups``. syslog: ``address``
    (``udp://``, ``tcp://`` or ``tls://host:port``), ``ca_file`` (tls), ``app_name``, ``facility``.
    http: ``url``, ``profile``, ``headers``, ``token``, ``index`` (elasticsearch), ``labels`` (loki).
    """

    type: Literal["stdout", "file", "syslog", "http"]
    # The key this sink's counters are reported under; "<type>-<position>" when omitted.
    name: str | None = None
    path: str | None = None
    max_bytes: ByteSize = ByteSize(100 * 2**20)
    backups: int = 5
    address: str | None = None
    ca_file: str | None = None
    app_name: str = "gateway"
    facility: Literal[
        "kern",
        "user",
        "daemon",
        "auth",
        "authpriv",
        "local0",
        "local1",
        "local2",
        "local3",
        "local4",
        "local5",
        "local6",
        "local7",
    ] = "authpriv"
    url: str | None = None
    profile: Literal["ndjson", "elasticsearch", "loki", "splunk"] = "ndjson"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    # Sent as "Authorization: Bearer <token>" ("Splunk <token>" for the splunk profile).
    token: str | None = None
    index: str = "gateway"
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    batch_size: int = 500
    flush_interval: Duration = Duration(1)
    timeout: Duration = Duration(10)
    # Attempts per batch before it is dropped (and counted); waits double from 0.2s up to 30s.
    retries: int = 5
    # Events waiting for this sink; beyond it access entries are dropped (and counted), security events
    # and checkpoints only when nothing else is queued. None: queue_size.
    queue_size: int | None = None


class TracingSettings(_Config, frozen=True):
    """OpenTelemetry traces of requests, sent to a collector over OTLP/HTTP (gateway/observe/tracing.py)."""

    enabled: bool = False
    # The collector's OTLP/HTTP traces URL (protobuf).
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    # The share of requests whose spans are sent, 0 to 1; 5xx answers and upstream failures always are.
    sample_ratio: float = 0.01
    # "ignore": the gateway draws every sampling decision itself. "trusted_proxies": a peer in
    # trusted_proxies decides by the sampled flag of its traceparent (and its tracestate is passed on).
    parent_sampling: Literal["ignore", "trusted_proxies"] = "ignore"
    service_name: str = "gateway"
    # Sent with every export (e.g. a hosted collector's API key); never logged.
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    # CA bundle for an https endpoint signed by a private CA.
    ca_file: str | None = None
    timeout: Duration = Duration(10)
    # How long finished spans wait to be sent together; shutdown sends what is left.
    export_interval: Duration = Duration(5)
    # Spans waiting to be sent; beyond it new spans are dropped.
    queue_size: int = 2048


class LoggingSettings(_Config, frozen=True):
    # One ECS JSON event per request. Off: no observer at all (the load tests measure the overhead).
    access_log: bool = True
    # Audit-trail events (sign-ins, MFA, lock-outs, admin changes) to the same sinks.
    security_events: bool = True
    sinks: tuple[LogSink, ...] = (LogSink(type="stdout"),)
    queue_size: int = 10_000
    # How long shutdown waits for the sinks to deliver what is queued.
    flush_timeout: Duration = Duration(5)


class PrivacyContact(_Config, frozen=True):
    """The grievance officer / privacy contact (DPDP Act s. 8(10), GDPR Art. 13(1)(b)) on /.gateway/privacy."""

    name: str = ""
    email: str = ""
    # Postal address, one line per element of the tuple.
    address: tuple[str, ...] = ()
    # What people are promised: how long until a grievance or rights request is answered.
    response_time: Duration = Duration(30 * 86400)


class Purpose(_Config, frozen=True):
    """One purpose the gateway (or the apps behind it) processes personal data for, with its notice.

    ``basis`` decides what a person can do about it: ``consent`` purposes are asked at sign-in and can
    be withdrawn; ``legitimate_interest`` purposes with ``objectable`` can be objected to; ``contract``
    and ``legal_obligation`` purposes are neither (restriction still stops them where it can).
    """

    name: str
    title: str
    # The notice shown to the person (plain text; paragraphs separated by blank lines).
    notice: str
    # Bumped whenever the notice changes: a consent given to an older version is asked again.
    version: int = 1
    basis: Literal["consent", "contract", "legal_obligation", "legitimate_interest"] = "consent"
    objectable: bool = False


# The gateway's own optional processing. "geolocation": the sign-in address looked up in the GeoIP
# database for impossible-travel detection; "policy_analytics": the request shapes kept for the admin
# console's what-if (gateway.authz.sample). Both rest on legitimate interest and can be objected to.
DEFAULT_PURPOSES: Final = (
    Purpose(
        name="geolocation",
        title="Sign-in location checks",
        notice=(
            "When you sign in, the gateway looks up the approximate location of your IP address to "
            "detect sign-ins from two places too far apart to travel between (a sign of a stolen "
            "password). Only the city-level position of the sign-in is kept, for a day."
        ),
        basis="legitimate_interest",
        objectable=True,
    ),
    Purpose(
        name="policy_analytics",
        title="Access pattern sample for policy reviews",
        notice=(
            "The gateway counts which paths of which applications you were allowed or refused, per "
            "hour, so administrators can check a policy change against real traffic before applying "
            "it. The counts are deleted after a day."
        ),
        basis="legitimate_interest",
        objectable=True,
    ),
)


class RetentionSettings(_Config, frozen=True):
    """How long each class of personal data is kept (``gateway retention plan`` lists the effect).

    Defaults are the product policy: registration data is deleted 180 days after the registration is
    cancelled or withdrawn; removed content (erased people's security records, removed factors) is
    kept 180 days for investigation, longer under a legal hold.
    """

    registration: Duration = Duration(180 * 86400)
    removed_content: Duration = Duration(180 * 86400)
    audit_events: Duration = Duration(400 * 86400)
    incidents: Duration = Duration(400 * 86400)
    privacy_requests: Duration = Duration(3 * 365 * 86400)
    # How often the purge runs (once per period across all replicas).
    interval: Duration = Duration(86400)


#: The laws a rights request can fall under; ``privacy.due`` has a due time for each.
PRIVACY_LAWS: Final = ("gdpr", "ccpa", "dpdp")


class DueTimes(_Config, frozen=True):
    """Time allowed to complete a rights request, per law (GDPR Art. 12(3): one month; CCPA: 45 days).
    A struct, not a map: setting one law keeps the others' defaults (a first-day run's
    ``due: {gdpr: 20d}`` was refused for lacking the other two)."""

    gdpr: Duration = Duration(30 * 86400)
    ccpa: Duration = Duration(45 * 86400)
    dpdp: Duration = Duration(30 * 86400)

    def of(self, law: str) -> Duration:
        """The due time of ``law`` (one of ``gdpr``, ``ccpa``, ``dpdp``)."""
        due: Duration = getattr(self, law)
        return due


class PrivacySettings(_Config, frozen=True):
    contact: PrivacyContact = PrivacyContact()
    # The law a rights request falls under unless the request says otherwise.
    default_law: Literal["gdpr", "ccpa", "dpdp"] = "gdpr"
    due: DueTimes = DueTimes()
    purposes: tuple[Purpose, ...] = DEFAULT_PURPOSES
    retention: RetentionSettings = RetentionSettings()
    # How often overdue requests are looked for and reported to the sinks.
    overdue_check: Duration = Duration(3600)
    # Exports a person may take themselves (portal page and API) per `export_window`; more are a 429
    # until the window ends (GDPR Art. 12(5): requests excessive by their repetitive character). Each
    # export reads everything held about the person and is kept in the register for years. 0: no limit.
    # Administrators' exports for a person are not counted.
    export_limit: int = 5
    export_window: Duration = Duration(3600)


class PgBackRestSettings(_Config, frozen=True):
    """pgBackRest for a PostgreSQL database (``gateway pgbackrest …``, ``backup.pgbackrest``).

    The gateway writes pgBackRest's configuration from these and runs it; pgBackRest itself makes the
    full/differential/incremental backups, archives the WAL and restores to a point in time. The
    repository is always encrypted (pgBackRest supports aes-256-cbc only): ``cipher_pass`` is best
    given as ``${file:…}`` or ``${env:…}``.
    """

    cipher_pass: str
    # The cluster's data directory; a host (pg1-host, reached over SSH by pgBackRest) when the
    # repository is on another machine, else the local socket directory (pg1-socket-path).
    pg_path: str
    stanza: str = "gateway"
    repo_path: str = "/var/lib/pgbackrest"
    pg_port: int = 5432
    pg_host: str | None = None
    pg_socket_path: str | None = None
    retention_full: int = 2
    retention_diff: int | None = None
    compress_type: Literal["none", "gz", "bz2", "lz4", "zst"] = "gz"
    # Where pgbackrest.conf is written and read; PostgreSQL's archive_command names it too.
    config_path: str = "/etc/pgbackrest/pgbackrest.conf"
    # The OS user pgBackRest runs as (the cluster's owner, as archive_command does); None: whoever
    # runs the gateway command.
    os_user: str | None = None


class BackupSettings(_Config, frozen=True):
    """Backups of the embedded database (``gateway backup …``).

    ``directory`` defaults to ``<data_dir>/backups``. ``targets`` are further copies of every backup: a
    directory, or ``rclone:<remote>:<path>``. Pruning keeps the newest backup of each of the
    ``keep_daily`` most recent days and of each of the ``keep_weekly`` most recent ISO weeks.
    """

    directory: str | None = None
    targets: tuple[str, ...] = ()
    # The account ledger (gateway.identity.ledger): deletions, erasures and disables kept outside the
    # database, so a gateway started on a restored one makes them again. None: <data_dir>/account-ledger.jsonl.
    ledger: str | None = None
    keep_daily: int = 7
    keep_weekly: int = 4
    # How often a running deployment makes one (once per period across all replicas); off: only
    # `gateway backup create` (or an outside scheduler) makes them.
    interval: Duration = Duration(86400)
    scheduled: bool = True
    # A backup is *missed* when the newest good one is older than interval + grace: an alert to the
    # sinks (once) and a red line in the readiness details until one succeeds.
    grace: Duration = Duration(7200)
    # PostgreSQL: the scheduled pgBackRest backup is a full one on this ISO weekday (1 Monday ... 7
    # Sunday) and whenever the repository has none; an incremental one on the other days.
    full_on: int = 7
    # PostgreSQL deployments: pgBackRest makes the backups instead (None: not configured).
    pgbackrest: PgBackRestSettings | None = None


class SmtpSettings(_Config, frozen=True):
    """The mail server notifications go out through (``gateway notify test`` tries it)."""

    host: str
    # The From address of every notification (also the envelope sender).
    sender: str
    # Shown before the sender's address ("Example Security <security@example.com>").
    sender_name: str = ""
    # starttls: upgrade a plain connection (port 587), refusing a server that cannot; tls: TLS from
    # the first byte (port 465); none: no encryption, refused unless host is a loopback address.
    security: Literal["starttls", "tls", "none"] = "starttls"
    # None: 587 for starttls, 465 for tls, 25 for none.
    port: int | None = None
    # Both or neither. Write the password as ${file:…} or ${env:…}, never the secret itself.
    username: str | None = None
    password: str | None = None
    # Connecting, and each command's answer, give up after this.
    timeout: Duration = Duration(30)
    # PEM bundle of the CA that signed the server's certificate (a private CA); None: the system's.
    ca_file: str | None = None

    @property
    def effective_port(self) -> int:
        """The port connected to: ``port``, or the usual one for ``security``."""
        if self.port is not None:
            return self.port
        return {"starttls": 587, "tls": 465, "none": 25}[self.security]


class MailTemplate(_Config, frozen=True):
    """One notification's text; ``$placeholder`` (or ``${placeholder}``) values are filled in, ``$$`` is ``$``."""

    subject: str
    body: str


# What a template may refer to (gateway.notify fills them; an unknown one is a config error).
TEMPLATE_PLACEHOLDERS: Final = (
    "name",
    "username",
    "incident",
    "title",
    "summary",
    "what_to_do",
    "contact",
    "organisation",
)

# Built in; a template of the same name in notify.templates replaces it.
DEFAULT_TEMPLATES: Final = {
    "incident": MailTemplate(
        subject="Security notice from $organisation: $title",
        body=(
            "Hello $name,\n"
            "\n"
            "We are writing to tell you about a security incident at $organisation that affects your\n"
            "account ($username).\n"
            "\n"
            "What happened:\n"
            "$summary\n"
            "\n"
            "What you should do:\n"
            "$what_to_do\n"
            "\n"
            "If you have questions, or want to complain about how this was handled, contact $contact.\n"
            "Please quote the reference $incident.\n"
            "\n"
            "$organisation\n"
        ),
    ),
}


class NotifySettings(_Config, frozen=True):
    """Email to people affected by an incident (``gateway.notify``)."""

    # None: notifications cannot be sent (the rest of the gateway does not need mail).
    smtp: SmtpSettings | None = None
    # $organisation in templates; empty: the host of public_url.
    organisation: str = ""
    # Templates by name, on top of DEFAULT_TEMPLATES.
    templates: dict[str, MailTemplate] = msgspec.field(default_factory=dict)


class Settings(_Config, frozen=True):
    public_url: str
    listen: str = "127.0.0.1:8080"
    data_dir: str = "./gateway-data"
    storage: StorageSettings = StorageSettings()
    state: StateSettings = StateSettings()
    trusted_proxies: tuple[str, ...] = ()
    tls: TlsSettings | None = None
    session: SessionSettings = SessionSettings()
    tokens: TokenSettings = TokenSettings()
    server: ServerSettings = ServerSettings()
    limits: Limits = Limits()
    passwords: PasswordSettings = PasswordSettings()
    regulation: RegulationSettings = RegulationSettings()
    mfa: MfaSettings = MfaSettings()
    # The AES-256-GCM keyring for secrets at rest (TOTP seeds, signing keys). None:
    # <data_dir>/keys/keyring.json, created on first start for the embedded default; with PostgreSQL
    # every replica must share one keyring, so it must exist (`gateway keys init`).
    keyring: str | None = None
    identity_providers: tuple[IdentityProvider, ...] = ()
    policy: PolicySettings = PolicySettings()
    assertion: AssertionSettings = AssertionSettings()
    identity_headers: IdentityHeaderNames = IdentityHeaderNames()
    admin: AdminSettings = AdminSettings()
    audit: AuditSettings = AuditSettings()
    logging: LoggingSettings = LoggingSettings()
    tracing: TracingSettings = TracingSettings()
    threat: ThreatSettings = ThreatSettings()
    lockdown: LockdownSettings = LockdownSettings()
    privacy: PrivacySettings = PrivacySettings()
    backup: BackupSettings = BackupSettings()
    notify: NotifySettings = NotifySettings()
    routes: tuple[Route, ...] = ()

    @property
    def served_over_https(self) -> bool:
        """The gateway terminates TLS itself, or is published under an https URL (behind a proxy)."""
        return self.tls is not None or self.public_url.startswith("https:")
