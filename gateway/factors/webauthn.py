"""WebAuthn second factor and passkeys: registration and authentication ceremonies over py_webauthn.

Four verbs, each a round trip with the browser::

    registration_options ──► navigator.credentials.create() ──► register
    authentication_options ──► navigator.credentials.get() ──► authenticate

The security properties, and where each one is enforced:

* **Single-use challenges.** Every options call stores a fresh 64-byte challenge in the fast state for
  :data:`CHALLENGE_TTL_S`, keyed by ceremony, user and challenge. The verify step *takes* it (atomic get
  and delete) before looking at anything else, so a replayed response, or a second attempt with the
  same challenge, finds nothing — also when the replay races the original across replicas.
* **Bound to this site.** The origin in the client data must be the ``public_url`` origin (ceremonies run
  on the auth host only) and the authenticator data must carry the hash of the RP ID: a phishing site
  relaying the ceremony gets neither right.
* **Bound to the user and the browser.** A registration challenge is only valid for the user it was
  issued to; a second-factor assertion must come from a credential of the signed-in user; a
  passwordless assertion must present the user handle of the credential's owner when it presents one.
  Every challenge is also bound to the browser that asked for it (``bound_to``: its CSRF cookie, and
  the sign-in's session family when signed in; ``gateway.web.flows.ceremony_holder``): an answer
  relayed into another browser, even one signed in with the same password, finds no challenge and
  makes nothing.
* **Passwordless means user verification.** A passkey alone counts as two factors (possession plus the
  PIN or biometric that unlocked it), so without the UV flag it is refused.
* **Cloned authenticators.** A signature counter that does not advance (while either the stored or the
  new value is non-zero) is refused and written to the audit trail as ``webauthn.sign_count_regression``.
  The check runs only *after* the signature verified, so nobody without the private key can forge such
  an alarm, and it is applied with a conditional ``UPDATE`` so two racing assertions cannot both win.

Every failure raises :class:`WebAuthnFailed` with one message; the reason goes to the log only, so the
client learns nothing about which check failed.

User handle (``user.id`` in the creation options): :func:`user_handle` encodes the numeric account id as
8 big-endian bytes. It is opaque and never the username or email (the spec forbids personal data there:
authenticators show and sync it), but it does reveal the internal row id. A random per-user handle
would be better and needs a ``users.webauthn_handle`` column, which the schema does not have yet; the
handle is only built and checked in this module, so switching later is a local change (passkeys made
before would keep presenting the old handle, which :meth:`WebAuthnService.authenticate` must then also
accept).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import unicodedata
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    bytes_to_base64url,
    options_to_json_dict,
    parse_authentication_credential_json,
    parse_client_data_json,
    parse_registration_credential_json,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticationCredential,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    RegistrationCredential,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from gateway.audit.trail import AuditLog
from gateway.clock import Clock
from gateway.errors import GatewayError
from gateway.factors.last import hold_owner, refuse_none_left
from gateway.factors.ledgered import note_removed
from gateway.identity.ledger import AccountLedger
from gateway.identity.models import User, WebAuthnCredential
from gateway.settings.schema import WebAuthnSettings
from gateway.store.db import Database, store_errors
from gateway.store.fast.base import FastState

__all__ = [
    "CHALLENGE_TTL_S",
    "WEBAUTHN_FAILED_MESSAGE",
    "WebAuthnAssertion",
    "WebAuthnFailed",
    "WebAuthnService",
    "user_handle",
]

logger = logging.getLogger("gateway.factors.webauthn")

#: How long a ceremony may take, from options to response (also the browser's timeout hint).
CHALLENGE_TTL_S: Final = 300
#: The one answer to every failed ceremony.
WEBAUTHN_FAILED_MESSAGE: Final = "The security key or passkey could not be verified. Please try again."

# WebAuthn §7.1 step 23: longer credential ids are refused (they would also bloat every allow list).
_MAX_CREDENTIAL_ID_BYTES: Final = 1023
_MAX_NAME_CHARS: Final = 64
_KIND: Final = "webauthn"

# Everything py_webauthn and its parsers can raise for malformed or unverifiable input: its own errors,
# plus what escapes from below it (cbor2's decode error and binascii's base64 error are ValueErrors,
# a stored key of an unexpected shape surfaces as TypeError/KeyError, a bad signature as InvalidSignature).
_VERIFY_ERRORS: Final = (
    WebAuthnException,
    InvalidSignature,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
)

_UV: Final = {
    "required": UserVerificationRequirement.REQUIRED,
    "preferred": UserVerificationRequirement.PREFERRED,
    "discouraged": UserVerificationRequirement.DISCOURAGED,
}


class WebAuthnFailed(GatewayError):
    """A WebAuthn ceremony failed (400). The message is always the same; the log says why."""

    status = 400
    reason = "webauthn-failed"
    title = WEBAUTHN_FAILED_MESSAGE

    def __init__(self) -> None:
        super().__init__(WEBAUTHN_FAILED_MESSAGE)


@dataclass(frozen=True, slots=True)
class WebAuthnAssertion:
    """What a verified assertion proves: this user holds this credential (and unlocked it, if UV)."""

    user_id: int
    credential_db_id: int
    # True when the authenticator verified the user (PIN, biometric). Always True for a passwordless
    # sign-in, which is refused otherwise.
    user_verified: bool


def user_handle(user_id: int) -> bytes:
    """The WebAuthn user handle of an account: its id as 8 big-endian bytes (see the module docstring).

    Args:
        user_id: The account's primary key.

    Returns:
        The opaque handle sent as ``user.id`` and returned by authenticators as ``userHandle``.
    """
    return user_id.to_bytes(8, "big")


def _origin_of(url: str) -> str:
    # A browser serialises an origin as lower-case scheme and host, with the port only when it is not
    # the scheme's default; compare against exactly that or every ceremony fails on a spelling.
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("https", "http") or not host:
        raise ValueError(f"public_url must be an http(s) URL with a host, got {url!r}")
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"


def _clean_name(name: str, *, default: str) -> str:
    # Names are shown in the portal and the admin console: drop control and format characters (no
    # newlines in log lines, no bidi overrides that make one key look like another) and bound the length.
    kept = "".join(
        " " if ch.isspace() else ch for ch in name if ch.isspace() or unicodedata.category(ch)[0] != "C"
    )
    kept = " ".join(kept.split())[:_MAX_NAME_CHARS].strip()
    return kept or default


def _client_challenge(client_data_json: bytes) -> bytes:
    # The challenge names the fast-state key; py_webauthn then compares it again with the taken one.
    try:
        return parse_client_data_json(client_data_json).challenge
    except _VERIFY_ERRORS as exc:
        raise _failed("malformed client data", detail=str(exc)) from exc


class WebAuthnService:
    """WebAuthn ceremonies and credential management for local accounts.

    Args:
        db: The relational store holding :class:`WebAuthnCredential` rows.
        state: Fast state for the single-use challenges.
        settings: RP name and id, user-verification policy, whether passkeys may sign in alone.
        public_url: The auth host (``Settings.public_url``); its origin is the only accepted origin.
        audit: The audit trail.
        clock: Time source for ``created_at`` / ``last_used_at``.
        ledger: Where a removal is noted, so that a restore does not bring the credential back.

    Raises:
        ValueError: ``public_url`` is not an http(s) URL, or ``settings.rp_id`` is neither its host nor
            a parent domain of it (browsers would refuse every ceremony).
    """

    def __init__(
        self,
        db: Database,
        state: FastState,
        settings: WebAuthnSettings,
        *,
        public_url: str,
        audit: AuditLog,
        clock: Clock,
        ledger: AccountLedger | None = None,
    ) -> None:
        self._db = db
        self._ledger = ledger
        self._state = state
        self._settings = settings
        self._audit = audit
        self._clock = clock
        self._origin = _origin_of(public_url)
        host = (urlsplit(public_url).hostname or "").lower()
        rp_id = (settings.rp_id or host).lower()
        if host != rp_id and not host.endswith("." + rp_id):
            raise ValueError(
                f"webauthn rp_id {rp_id!r} must be the public_url host {host!r} or a parent of it"
            )
        self._rp_id = rp_id

    @property
    def rp_id(self) -> str:
        """The relying-party id passkeys are bound to."""
        return self._rp_id

    @property
    def origin(self) -> str:
        """The one origin ceremonies are accepted from."""
        return self._origin

    # -- registration ---------------------------------------------------------------------------------

    async def registration_options(
        self, *, user_id: int, username: str, display_name: str, discoverable: bool, bound_to: str
    ) -> str:
        """Start registering a security key or passkey.

        Args:
            user_id: The account enrolling (already signed in and recently re-authenticated).
            bound_to: Who may finish the ceremony (:func:`_key`): the same value must come with the answer.
            username: Shown by the authenticator to tell accounts apart.
            display_name: Friendly name shown by the authenticator; the username when empty.
            discoverable: A passkey (resident key required, usable without typing a username) rather
                than a second-factor security key (resident key discouraged).

        Returns:
            ``PublicKeyCredentialCreationOptions`` as JSON for ``navigator.credentials.create()``.
        """
        existing = await self._credentials(user_id)
        options = generate_registration_options(
            rp_id=self._rp_id,
            rp_name=self._settings.rp_name,
            user_name=username,
            user_id=user_handle(user_id),
            user_display_name=display_name or username,
            timeout=CHALLENGE_TTL_S * 1000,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=(
                    ResidentKeyRequirement.REQUIRED if discoverable else ResidentKeyRequirement.DISCOURAGED
                ),
                user_verification=_UV[self._settings.user_verification],
            ),
            # The browser refuses to create a second credential on an authenticator that already holds
            # one of these, so nobody ends up with two entries for one key.
            exclude_credentials=[_descriptor(cred) for cred in existing],
        )
        document = options_to_json_dict(options)
        # credProps tells us whether the authenticator really made a discoverable credential
        # ("preferred" and some platforms decide on their own); py_webauthn 3 has no parameter for it.
        document["extensions"] = {"credProps": True}
        pending = json.dumps({"discoverable": discoverable}).encode()
        key = _key("reg", user_id, bound_to, options.challenge)
        await self._state.set(key, pending, ttl=CHALLENGE_TTL_S)
        return json.dumps(document)

    async def register(
        self, *, user_id: int, name: str, credential_json: str, bound_to: str, ip: str = ""
    ) -> WebAuthnCredential:
        """Finish a registration: verify the authenticator's answer and store the credential.

        Args:
            user_id: The account enrolling; must be the one the options were made for.
            bound_to: As given to :meth:`registration_options`.
            name: A label chosen by the user ("YubiKey 5", "Phone"); cleaned and bounded.
            credential_json: ``PublicKeyCredential.toJSON()`` of the created credential.
            ip: The client's address, for the audit record.

        Returns:
            The stored credential.

        Raises:
            WebAuthnFailed: Malformed, replayed, expired, for another user or origin or RP, without
                required user verification, or a credential id already registered.
        """
        document, credential = _parse_registration(credential_json)
        challenge = _client_challenge(credential.response.client_data_json)
        pending = await self._take(_key("reg", user_id, bound_to, challenge))
        discoverable_requested = bool(json.loads(pending).get("discoverable", False))
        try:
            verified = verify_registration_response(
                credential=credential,
                expected_challenge=challenge,
                expected_rp_id=self._rp_id,
                expected_origin=[self._origin],
                require_user_verification=self._settings.user_verification == "required",
            )
        except _VERIFY_ERRORS as exc:
            raise _failed("registration rejected", user_id=user_id, detail=str(exc)) from exc
        if len(verified.credential_id) > _MAX_CREDENTIAL_ID_BYTES:
            raise _failed("credential id too long", user_id=user_id)
        transports = " ".join(t.value for t in credential.response.transports or [])
        discoverable = _cred_props_rk(document)
        row = WebAuthnCredential(
            user_id=user_id,
            name=_clean_name(name, default="Passkey" if discoverable_requested else "Security key"),
            credential_id=verified.credential_id,
            public_key=verified.credential_public_key,
            sign_count=verified.sign_count,
            transports=transports,
            aaguid=verified.aaguid,
            discoverable=discoverable if discoverable is not None else discoverable_requested,
            backed_up=verified.credential_backed_up,
            user_verified=verified.user_verified,
            created_at=self._clock.now(),
            last_used_at=None,
        )
        async with self._db.session(write=True) as session:
            with store_errors("cannot store the WebAuthn credential"):
                user = await session.get(User, user_id)
                if user is None:
                    raise _failed("no such account", user_id=user_id)
                taken = await session.scalar(
                    select(WebAuthnCredential.id).where(
                        WebAuthnCredential.credential_id == verified.credential_id
                    )
                )
                if taken is not None:
                    raise _failed("credential id already registered", user_id=user_id)
                username = user.username
                session.add(row)
                try:
                    await session.commit()
                except IntegrityError as exc:
                    # Lost a race with a concurrent registration of the same credential id.
                    raise _failed("credential id already registered", user_id=user_id) from exc
        await self._audit.record(
            "factor.enrolled",
            actor=f"user:{username}",
            subject=username,
            ip=ip,
            details={"kind": _KIND, "name": row.name, "discoverable": row.discoverable},
        )
        return row

    # -- authentication -------------------------------------------------------------------------------

    async def authentication_options(self, *, user_id: int | None, bound_to: str) -> str:
        """Start an authentication ceremony.

        Args:
            user_id: The signed-in user proving a second factor (their credentials are offered); None
                for a passwordless sign-in with a passkey (any discoverable credential may answer).

        Returns:
            ``PublicKeyCredentialRequestOptions`` as JSON for ``navigator.credentials.get()``.

        Raises:
            WebAuthnFailed: ``user_id`` has no WebAuthn credential, or passwordless sign-in is disabled.
        """
        if user_id is None:
            if not self._settings.passwordless:
                raise _failed("passwordless sign-in is disabled")
            allow: builtins.list[PublicKeyCredentialDescriptor] = []
            # Passwordless must verify the user (see authenticate); asking for less would only let
            # the browser skip the PIN and then fail.
            uv = UserVerificationRequirement.REQUIRED
        else:
            existing = await self._credentials(user_id)
            if not existing:
                # Empty allowCredentials would turn this into a passkey prompt for any account.
                raise _failed("no credentials", user_id=user_id)
            allow = [_descriptor(cred) for cred in existing]
            uv = _UV[self._settings.user_verification]
        options = generate_authentication_options(
            rp_id=self._rp_id,
            timeout=CHALLENGE_TTL_S * 1000,
            allow_credentials=allow,
            user_verification=uv,
        )
        await self._state.set(_key("auth", user_id, bound_to, options.challenge), b"1", ttl=CHALLENGE_TTL_S)
        return json.dumps(options_to_json_dict(options))

    async def authenticate(
        self, *, credential_json: str, user_id: int | None, bound_to: str
    ) -> WebAuthnAssertion:
        """Finish an authentication ceremony.

        Args:
            credential_json: ``PublicKeyCredential.toJSON()`` of the assertion.
            user_id: As given to :meth:`authentication_options`: the signed-in user, or None for a
                passwordless sign-in.

        Returns:
            Who signed in, with which credential, and whether the user was verified.

        Raises:
            WebAuthnFailed: Malformed, replayed or expired; unknown credential or one of another user;
                wrong origin or RP; bad signature; missing required user verification; or a signature
                counter that went backwards (also audited as ``webauthn.sign_count_regression``).
        """
        credential = _parse_authentication(credential_json)
        challenge = _client_challenge(credential.response.client_data_json)
        if user_id is None and not self._settings.passwordless:
            # Options issued before a reload that turned passwordless off must not finish after it.
            await self._state.delete(_key("auth", None, bound_to, challenge))
            raise _failed("passwordless sign-in is disabled")
        # Taken first: a failed attempt burns the challenge, so nothing can be retried against it.
        await self._take(_key("auth", user_id, bound_to, challenge))
        async with self._db.session() as session:
            with store_errors("cannot read WebAuthn credentials"):
                stored = await session.scalar(
                    select(WebAuthnCredential).where(WebAuthnCredential.credential_id == credential.raw_id)
                )
        if stored is None:
            raise _failed("unknown credential", user_id=user_id)
        if user_id is not None and stored.user_id != user_id:
            raise _failed("credential of another user", user_id=user_id, owner=stored.user_id)
        handle = credential.response.user_handle
        if user_id is None and handle != user_handle(stored.user_id):
            # WebAuthn §7.2 step 6: with no user named beforehand (a passkey sign-in), the response
            # must carry the user handle, and it must be the credential's owner's (a discoverable
            # credential always has one: its absence means the response was not made for this).
            raise _failed("user handle missing or not the credential's owner", owner=stored.user_id)
        try:
            verified = verify_authentication_response(
                credential=credential,
                expected_challenge=challenge,
                expected_rp_id=self._rp_id,
                expected_origin=[self._origin],
                credential_public_key=stored.public_key,
                # 0 turns py_webauthn's own counter check off: ours runs after the signature is known
                # to be good, so that only the key holder (a clone) can trigger the security event.
                credential_current_sign_count=0,
                require_user_verification=user_id is None or self._settings.user_verification == "required",
            )
        except _VERIFY_ERRORS as exc:
            raise _failed("assertion rejected", user_id=user_id, detail=str(exc)) from exc
        new_count = verified.new_sign_count
        if not await self._advance(stored, new_count, backed_up=verified.credential_backed_up):
            await self._report_regression(stored, new_count)
            raise _failed(
                "sign count regression", owner=stored.user_id, stored=stored.sign_count, new=new_count
            )
        return WebAuthnAssertion(
            user_id=stored.user_id, credential_db_id=stored.id, user_verified=verified.user_verified
        )

    async def _advance(self, stored: WebAuthnCredential, new_count: int, *, backed_up: bool) -> bool:
        # Counters of authenticators that keep none stay 0 forever (allowed); any other value must
        # grow. The condition is in the UPDATE itself, so of two assertions racing with the same
        # count (a clone used at the same moment) only one can succeed.
        advanced = (
            WebAuthnCredential.sign_count == 0
            if new_count == 0
            else WebAuthnCredential.sign_count < new_count
        )
        async with self._db.session() as session:
            with store_errors("cannot update the WebAuthn credential"):
                changed = await session.scalars(
                    update(WebAuthnCredential)
                    .where(WebAuthnCredential.id == stored.id, advanced)
                    .values(sign_count=new_count, last_used_at=self._clock.now(), backed_up=backed_up)
                    .returning(WebAuthnCredential.id)
                )
                ok = changed.first() is not None
                await session.commit()
        return ok

    async def _report_regression(self, stored: WebAuthnCredential, new_count: int) -> None:
        async with self._db.session() as session:
            with store_errors("cannot read the account"):
                username = await session.scalar(select(User.username).where(User.id == stored.user_id)) or ""
        await self._audit.record(
            "webauthn.sign_count_regression",
            actor=f"user:{username}",
            subject=username,
            outcome="refused",
            details={
                "credential": stored.id,
                "name": stored.name,
                "stored_count": stored.sign_count,
                "presented_count": new_count,
            },
        )

    # -- management -----------------------------------------------------------------------------------

    async def list(self, user_id: int) -> builtins.list[WebAuthnCredential]:
        """The user's WebAuthn credentials, oldest first."""
        return await self._credentials(user_id)

    async def rename(self, user_id: int, credential_db_id: int, name: str) -> bool:
        """Rename one of the user's credentials.

        Args:
            user_id: The owner; a credential of anyone else is left alone.
            credential_db_id: The credential's row id.
            name: The new label (cleaned and bounded; blank keeps a generic name).

        Returns:
            False if the user has no such credential.
        """
        async with self._db.session(write=True) as session:
            with store_errors("cannot rename the WebAuthn credential"):
                row = await session.scalar(
                    select(WebAuthnCredential).where(
                        WebAuthnCredential.id == credential_db_id, WebAuthnCredential.user_id == user_id
                    )
                )
                if row is None:
                    return False
                row.name = _clean_name(name, default="Passkey" if row.discoverable else "Security key")
                await session.commit()
        return True

    async def remove(
        self, user_id: int, credential_db_id: int, *, ip: str = "", keep_one: bool = False
    ) -> bool:
        """Delete one of the user's credentials (the caller checks a recent second factor first).

        Args:
            user_id: The owner; a credential of anyone else is left alone.
            credential_db_id: The credential's row id.
            ip: The client's address, for the audit record.
            keep_one: Refuse to remove the account's only second factor (:mod:`gateway.factors.last`).

        Returns:
            False if the user has no such credential.

        Raises:
            OnlyFactor: With ``keep_one``, nothing else is left; nothing was removed.
        """
        async with self._db.session() as session:
            with store_errors("cannot remove the WebAuthn credential"):
                if keep_one:
                    await hold_owner(session, user_id)
                gone = (
                    await session.execute(
                        delete(WebAuthnCredential)
                        .where(
                            WebAuthnCredential.id == credential_db_id,
                            WebAuthnCredential.user_id == user_id,
                        )
                        .returning(WebAuthnCredential.name, WebAuthnCredential.created_at)
                    )
                ).first()
                if keep_one and gone is not None:
                    await refuse_none_left(session, user_id)
                username = await session.scalar(select(User.username).where(User.id == user_id)) or ""
                # Noted in the ledger: a restore must not bring a stolen key's credential back.
                noted = (
                    await note_removed(
                        self._ledger,
                        session,
                        "webauthn",
                        user_id=user_id,
                        row_id=credential_db_id,
                        created_at=gone.created_at,
                    )
                    if gone is not None
                    else []
                )
                await session.commit()
        if self._ledger is not None:
            await self._ledger.append(noted)
        if gone is None:
            return False
        await self._audit.record(
            "factor.removed",
            actor=f"user:{username}",
            subject=username,
            ip=ip,
            details={"kind": _KIND, "name": gone.name},
        )
        return True

    # -- helpers --------------------------------------------------------------------------------------

    async def _credentials(self, user_id: int) -> builtins.list[WebAuthnCredential]:
        async with self._db.session() as session:
            with store_errors("cannot read WebAuthn credentials"):
                rows = await session.scalars(
                    select(WebAuthnCredential)
                    .where(WebAuthnCredential.user_id == user_id)
                    .order_by(WebAuthnCredential.id)
                )
                return builtins.list(rows.all())

    async def _take(self, key: str) -> bytes:
        pending = await self._state.take(key)
        if pending is None:
            raise _failed("unknown, expired or already used challenge")
        return pending


def _key(ceremony: Literal["reg", "auth"], user_id: int | None, bound_to: str, challenge: bytes) -> str:
    """The fast-state key of one pending challenge.

    The user id binds it to the account it was issued for ("-" for passwordless: a challenge issued
    for one mode cannot finish the other); ``bound_to`` to the browser that asked, hashed so that a
    session family or cookie value never appears in a key.
    """
    if not bound_to:
        # Fail closed: a caller that lost the binding must not share one empty "browser" with others.
        raise _failed("challenge not bound to a browser")
    who = "-" if user_id is None else str(user_id)
    holder = hashlib.sha256(bound_to.encode()).hexdigest()[:32]
    return f"webauthn:{ceremony}:{who}:{holder}:{bytes_to_base64url(challenge)}"


def _descriptor(cred: WebAuthnCredential) -> PublicKeyCredentialDescriptor:
    transports = []
    for name in cred.transports.split():
        try:
            transports.append(AuthenticatorTransport(name))
        except ValueError:
            continue  # a transport newer than this py_webauthn: the browser can do without the hint
    return PublicKeyCredentialDescriptor(id=cred.credential_id, transports=transports or None)


def _parse_registration(credential_json: str) -> tuple[dict[str, Any], RegistrationCredential]:
    try:
        document = json.loads(credential_json)
        if not isinstance(document, dict):
            raise TypeError("credential is not a JSON object")
        return document, parse_registration_credential_json(document)
    except _VERIFY_ERRORS as exc:
        raise _failed("malformed registration credential", detail=str(exc)) from exc


def _parse_authentication(credential_json: str) -> AuthenticationCredential:
    try:
        return parse_authentication_credential_json(credential_json)
    except _VERIFY_ERRORS as exc:
        raise _failed("malformed authentication credential", detail=str(exc)) from exc


def _cred_props_rk(document: dict[str, Any]) -> bool | None:
    # Client-reported and unsigned, so it only decides how the credential is labelled and listed,
    # never whether a sign-in is accepted.
    results = document.get("clientExtensionResults")
    props = results.get("credProps") if isinstance(results, dict) else None
    rk = props.get("rk") if isinstance(props, dict) else None
    return rk if isinstance(rk, bool) else None


def _failed(why: str, **context: object) -> WebAuthnFailed:
    # The detail goes to the operator's log only. json.dumps escapes what a client controls (an origin
    # string, say), so a crafted response cannot forge log lines.
    logger.warning("webauthn ceremony failed: %s %s", why, json.dumps(context, default=str, sort_keys=True))
    return WebAuthnFailed()
