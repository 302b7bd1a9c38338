"""Keys: the keyring and the assertion-signing keys with their states; rotate them (``/keys``, ``/api/keys``).

What ``gateway keys list`` and ``gateway keys rotate`` do, through the same domain calls
(:mod:`gateway.crypto.lifecycle`). Nothing here ever answers private material: a signing key is its
kid, algorithm, state and times; the keyring is its key ids.

The keyring is read from its file for each answer, so a key added by a rotation elsewhere shows up at
once. A keyring rotation here rotates a copy read from the file: this process (like every running
gateway) goes on encrypting under the key all of them hold until it meets a ciphertext under the new
one (then the keyring reads its file again and takes the new key up), so nothing it writes in between
is unreadable to the others.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, get, post
from litestar.params import JSONBody
from litestar.response import Template

from admin.actions import admin_of, audit, confirm_destructive
from admin.console.render import PAGE_OPT, page
from admin.deps import AdminServices
from gateway.backup.sets import backup_directory, vouching
from gateway.crypto.keyring import Keyring, KeyringError, keyring_path
from gateway.crypto.lifecycle import Rotation, RotationTarget, describe_key, rotate_keys
from gateway.crypto.signing import ALGORITHM, SigningKeys, announce_compromise
from gateway.errors import BadRequest, GatewayError
from gateway.reasons import REASON_PATTERN
from gateway.response.exposure import exposed_by
from gateway.services import Services
from gateway.web.deps import Config, Identity

__all__ = ["HANDLERS", "KeysView", "keys_view"]


class KeyringKeyView(msgspec.Struct, kw_only=True):
    kid: str
    # New secrets are encrypted under the active key (once a process has read it).
    active: bool
    # The key this admin process encrypts under now; differs from ``active`` until it meets the new key.
    in_use_here: bool
    # When the key was marked compromised (decrypts, never active again), else None.
    compromised_at: str | None = None


class KeyringView(msgspec.Struct, kw_only=True):
    path: str
    algorithm: str
    active: str
    keys: list[KeyringKeyView]


class SigningKeyView(msgspec.Struct, kw_only=True):
    """One assertion-signing key: ``next`` (published, signs later), ``active`` (signs), ``retiring``
    (published so its tokens still verify), ``expired`` (deleted at the next rotation)."""

    kid: str
    algorithm: str
    state: str
    created_at: datetime | None
    active_from: datetime | None
    retired_at: datetime | None
    published_until: datetime | None
    keyring_key: str


class KeysView(msgspec.Struct, kw_only=True):
    keyring: KeyringView
    signing_keys: list[SigningKeyView]
    # assertion.publish_ahead and assertion.grace, in seconds.
    publish_ahead: float
    grace: float


class RotateRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``signing``: a new assertion-signing key; ``keyring``: a new keyring key; ``all``: both."""

    which: Literal["signing", "keyring", "all"]
    reason: Annotated[
        str,
        msgspec.Meta(
            min_length=1, pattern=REASON_PATTERN, max_length=2000, description="Kept in the audit trail."
        ),
    ]
    compromised: Annotated[
        bool,
        msgspec.Meta(
            description="The keys leaked (as `gateway keys rotate --compromised`). Signing: the new key "
            "signs at once and every old one is deleted. Keyring: the key that was active is marked "
            "compromised (decrypts, never active again; only the backups it had signed and the audit "
            "records before now stay trusted under it). Not with ``stage``."
        ),
    ] = False
    leaked_since: Annotated[
        datetime | None,
        msgspec.Meta(
            description="With ``compromised`` and a keyring rotation: the earliest the keys could have leaked "
            "(UTC when no offset is given), when known; the backups made from then on are not trusted "
            "either (as `gateway keys rotate --leaked-since`). Not in the future."
        ),
    ] = None
    drop_unsettled: Annotated[
        bool,
        msgspec.Meta(
            description="With ``compromised`` and a keyring rotation: mark even though this node's account "
            "ledger holds changes the database lacks, and give them up (as `gateway keys rotate "
            "--drop-unsettled`; without it such a mark is a 409 ``ledger-unsettled`` naming each)."
        ),
    ] = False
    stage: Annotated[
        bool,
        msgspec.Meta(
            description="With ``keyring``: add the new key without making it active (as `gateway keys "
            "rotate --keyring --stage`); activate it with ``POST /api/keys/activate`` once every replica "
            "has the file."
        ),
    ] = False


class ActivateRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Make a keyring key already in the file (a staged one) the active one."""

    kid: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    reason: Annotated[
        str,
        msgspec.Meta(
            min_length=1, pattern=REASON_PATTERN, max_length=2000, description="Kept in the audit trail."
        ),
    ]


class UnknownKey(GatewayError):
    """No key of that id in the keyring file (404)."""

    status = 404
    reason = "unknown-key"
    title = "No such key"


class KeyCompromised(GatewayError):
    """The key is marked compromised and never becomes active again (409)."""

    status = 409
    reason = "key-compromised"
    title = "Key marked compromised"


class RotateResult(msgspec.Struct, kw_only=True):
    which: str
    signing_key: str | None
    keyring_key: str | None
    message: str
    keys: KeysView
    # With a keyring key marked compromised: the accounts whose authenticator-app seeds it encrypted,
    # to reset (`gateway user reset-mfa`): the seeds are known to whoever holds the key.
    totp_exposed: list[str] = msgspec.field(default_factory=list)


def _signing(services: Services) -> SigningKeys:
    settings = services.live.current.settings
    identity = services.identity
    return SigningKeys(services.db, identity.keyring, identity.clock, settings.assertion)


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text).astimezone(UTC) if text is not None else None


async def _file_keyring(services: Services) -> Keyring:
    """The keyring as its file holds it now; this process's own if the file cannot be read."""
    try:
        return await asyncio.to_thread(Keyring.load, keyring_path(services.live.current.settings))
    except KeyringError:
        return services.identity.keyring


async def keys_view(services: AdminServices) -> KeysView:
    """What the Keys page and ``GET /api/keys`` show."""
    settings = services.live.current.settings
    keyring = await _file_keyring(services)
    here = services.identity.keyring.active_id
    keyset = await _signing(services).load(with_private=False)
    now = services.identity.clock.time()
    signing = []
    for key in keyset.keys:
        facts = describe_key(keyset, key, now)
        signing.append(
            SigningKeyView(
                kid=key.kid, algorithm=key.jwk.get("alg", ALGORITHM), state=facts["state"],
                created_at=_when(facts["created_at"]), active_from=_when(facts["active_from"]),
                retired_at=_when(facts["retired_at"]), published_until=_when(facts["published_until"]),
                keyring_key=key.keyring_kid,
            )
        )  # fmt: skip
    return KeysView(
        keyring=KeyringView(
            path=str(keyring_path(settings)), algorithm="AES-256-GCM", active=keyring.active_id,
            keys=[
                KeyringKeyView(
                    kid=kid, active=kid == keyring.active_id, in_use_here=kid == here,
                    compromised_at=mark.at if (mark := keyring.compromised.get(kid)) is not None else None,
                )
                for kid in sorted(keyring.key_ids, key=lambda k: (k != keyring.active_id, k))
            ],
        ),
        signing_keys=signing,
        publish_ahead=float(settings.assertion.publish_ahead),
        grace=float(settings.assertion.grace),
    )  # fmt: skip


@get("/api/keys", cache=False, tags=["keys"])
async def keys_json(services: AdminServices) -> KeysView:
    """The keyring's key ids (which one is active) and every assertion-signing key with its state and
    times (created, signs from, signs until, published until). Never private material."""
    return await keys_view(services)


@get("/keys", cache=False, opt=PAGE_OPT, include_in_schema=False)
async def keys_page(request: Request[Any, Any, Any], services: AdminServices) -> Template:
    return page(request, "keys.html", title="Keys", section="keys", view=await keys_view(services))


def _message(rotation: Rotation, view: KeysView) -> str:
    parts = []
    if rotation.signing is not None and rotation.compromised:
        parts.append(
            f"New signing key {rotation.signing.kid} signs now and every earlier key is deleted: running "
            "gateways were told to reload at once (within 30 s at the latest), and a worker that cannot "
            "reload stops signing. Apps must fetch the JWKS anew."
        )
    elif rotation.signing is not None:
        new = next((k for k in view.signing_keys if k.kid == rotation.signing.kid), None)
        if new is not None and new.state == "active":
            parts.append(f"New signing key {rotation.signing.kid} signs now.")
        else:
            signs_from = (
                new.active_from.strftime("%Y-%m-%d %H:%M:%S UTC") if new and new.active_from else "later"
            )
            parts.append(
                f"New signing key {rotation.signing.kid} is published now and signs from {signs_from} "
                "(assertion.publish_ahead); running gateways load it within 30 s."
            )
    if rotation.keyring_key is not None and rotation.staged:
        parts.append(
            f"New keyring key {rotation.keyring_key} is staged in the keyring file: it decrypts but encrypts "
            "nothing yet. Give every replica this file, then activate it here (or `gateway keys activate "
            f"{rotation.keyring_key}`)."
        )
    elif rotation.keyring_key is not None:
        parts.append(
            f"New keyring key {rotation.keyring_key} is active in the keyring file; older keys stay for "
            "decryption. Restart the gateways (or roll them) so they encrypt with it."
        )
    if rotation.keyring_compromised is not None and rotation.keyring_mark is not None:
        parts.append(
            f"Keyring key {rotation.keyring_compromised} is marked compromised"
            + (f", with the older keys {', '.join(rotation.keyring_also)}" if rotation.keyring_also else "")
            + ": it still decrypts, never "
            f"becomes active again, and only the {len(rotation.keyring_mark.backups)} backup(s) it had "
            f"signed and the audit records up to {rotation.keyring_mark.audit_seq} stay trusted under it. "
            "Make a new backup now."
        )
    return " ".join(parts)


@post("/api/keys/rotate", status_code=200, tags=["keys"])
async def rotate(
    request: Request[Any, Any, Any],
    services: AdminServices,
    identity: Identity,
    config: Config,
    data: JSONBody[RotateRequest],
) -> RotateResult:
    """Rotate the signing key, the keyring or both (signing first), as ``gateway keys rotate`` does.

    A new signing key is published at once and signs after ``assertion.publish_ahead``; the key it
    replaces stays published for ``assertion.grace``. With ``compromised`` (the keys leaked), the new
    key signs at once, every old one is deleted and the running workers are told to reload now (400
    ``bad-request`` with ``keyring`` alone: a keyring key is not a signing key). A new keyring key is active for new secrets in
    the file; gateways reading it take it up the first time they meet it; older keys stay for
    decryption. Needs a second factor used within ``admin.destructive_reauth_max_age`` (403
    ``step-up-required``). Recorded as ``admin.keys.rotate`` (refusals too) and, done, as ``keys.rotated``
    (by :func:`rotate_keys`, as for every channel).
    """
    admin = admin_of(request)
    details: dict[str, object] = {"reason": data.reason, "which": data.which}
    if data.compromised:
        details["compromised"] = True
    if data.stage:
        details["stage"] = True
    if data.leaked_since is not None:
        details["leaked_since"] = data.leaked_since.isoformat()
    if data.drop_unsettled:
        details["drop_unsettled"] = True
    try:
        if data.compromised and data.stage:
            raise BadRequest(
                "compromised with stage: a leaked keyring key must stop encrypting now; rotate in one step."
            )
        if data.stage and data.which != "keyring":
            raise BadRequest("stage stages a keyring key: rotate 'keyring' with it.")
        _refuse_stray_leak_options(data)
        confirm_destructive(admin, config, identity.clock)
        # A copy from the file: this process keeps encrypting under the key every gateway holds.
        keyring = await asyncio.to_thread(Keyring.load, keyring_path(config.settings))
        rotation = await rotate_keys(
            RotationTarget(data.which), signing=_signing(services), keyring=keyring,
            keyring_file=keyring_path(config.settings), audit=identity.audit, actor=admin.actor,
            compromised=data.compromised, announce=lambda at: announce_compromise(services.fast, at),
            ledger=services.identity.accounts.ledger, stage=data.stage,
            backups_signed=vouching(backup_directory(config.settings), keyring, identity.audit),
            leaked_since=data.leaked_since, drop_unsettled=data.drop_unsettled,
        )  # fmt: skip
    except GatewayError as err:
        await audit(identity, request, "admin.keys.rotate", actor=admin.actor, outcome="failure", subject="keys",
                    details={**details, "error": err.reason})  # fmt: skip
        raise
    await audit(identity, request, "admin.keys.rotate", actor=admin.actor, subject="keys",
                details={**details, **rotation.details()})  # fmt: skip
    view = await keys_view(services)
    message, exposed = _message(rotation, view), []
    if rotation.keyring_compromised is not None:
        leaked = (rotation.keyring_compromised, *rotation.keyring_also)
        try:
            exposure = await exposed_by(services.db, leaked)
        except GatewayError as err:
            message += (
                f" Could not count what {', '.join(leaked)} encrypted ({err.detail}): take every "
                "authenticator app enrolled before now as known (`gateway user reset-mfa USERNAME`)."
            )
        else:
            exposed = list(exposure.accounts)
            message += " " + " ".join(f"{line[0].upper()}{line[1:]}." for line in exposure.lines())
    return RotateResult(
        which=data.which,
        signing_key=rotation.signing.kid if rotation.signing is not None else None,
        keyring_key=rotation.keyring_key,
        message=message,
        keys=view,
        totp_exposed=exposed,
    )


def _refuse_stray_leak_options(data: RotateRequest) -> None:
    """400 for a leak's time or ``drop_unsettled`` given without a keyring mark: they would change
    nothing, and the caller meant something else (a leak's time in the future is refused by the rotation
    itself, before anything is rotated)."""
    marks = data.compromised and data.which != "signing"
    if data.leaked_since is not None and not marks:
        raise BadRequest(
            "leaked_since says when a keyring key leaked: give it with compromised, rotating the keyring."
        )
    if data.drop_unsettled and not marks:
        raise BadRequest(
            "drop_unsettled gives up account changes a keyring mark would leave unread: give it with "
            "compromised, rotating the keyring."
        )


@post("/api/keys/activate", status_code=200, tags=["keys"])
async def activate(
    request: Request[Any, Any, Any],
    services: AdminServices,
    identity: Identity,
    config: Config,
    data: JSONBody[ActivateRequest],
) -> RotateResult:
    """Make a keyring key already in the file (one staged by a rotation with ``stage``) the key new
    secrets are encrypted under, as ``gateway keys activate`` does. Run it once every replica has the
    file with that key. 404 ``unknown-key`` for a key id the file lacks. Destructive: needs a second
    factor used within ``admin.destructive_reauth_max_age``. Recorded as ``admin.keys.activate`` (refusals
    too) and, done, as ``keys.activated``."""
    admin = admin_of(request)
    details: dict[str, object] = {"reason": data.reason, "keyring_key": data.kid}
    path = keyring_path(config.settings)
    try:
        confirm_destructive(admin, config, identity.clock)
        # A copy from the file: this process keeps encrypting under the key every gateway holds.
        keyring = await asyncio.to_thread(Keyring.load, path)
        if data.kid not in keyring.key_ids:
            raise UnknownKey(
                f"The keyring file {path} has no key {data.kid!r}; the Keys page lists its keys."
            )
        if data.kid in keyring.compromised:
            raise KeyCompromised(
                f"Keyring key {data.kid} is marked compromised: it never becomes active again."
            )
        already = keyring.active_id == data.kid
        if not already:
            await asyncio.to_thread(keyring.activate, path, data.kid)
    except GatewayError as err:
        await audit(identity, request, "admin.keys.activate", actor=admin.actor, outcome="failure", subject="keys",
                    details={**details, "error": err.reason})  # fmt: skip
        raise
    await audit(identity, request, "admin.keys.activate", actor=admin.actor, subject="keys", details=details)
    if not already:
        await identity.audit.record(
            "keys.activated", actor=admin.actor, subject="keys", details={"keyring_key": data.kid}
        )
    message = (
        f"Keyring key {data.kid} is the active key already."
        if already
        else f"Keyring key {data.kid} is active for new secrets. Gateways reading this file take it up the "
        "first time they meet it; replicas with their own copy need this file (a rolling restart)."
    )
    return RotateResult(
        which="activate",
        signing_key=None,
        keyring_key=data.kid,
        message=message,
        keys=await keys_view(services),
    )


HANDLERS = (keys_json, keys_page, rotate, activate)
