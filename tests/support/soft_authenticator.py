"""A software WebAuthn authenticator plus the browser's part of the ceremony, for protocol-level tests.

It answers the options JSON a relying party sends (``PublicKeyCredentialCreationOptionsJSON`` /
``…RequestOptionsJSON``) with the JSON a browser's ``PublicKeyCredential.toJSON()`` would post back:
ES256 keys (``cryptography``), "none" attestation, authenticator data with correct UP/UV/AT/BE/BS flags
and signature counter, CBOR written by the small encoder below (independent of the ``cbor2`` decoder
the server uses, so the two cross-check each other).

Knobs make it misbehave the ways attackers and broken clients do: another origin (a phishing site),
another RP ID hash, no user verification, a chosen signature counter (a clone), a chosen credential or
user handle, and replay of the last response.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "AuthenticatorRefused",
    "SoftAuthenticator",
    "SoftCredential",
    "b64url",
    "b64url_decode",
    "cbor_encode",
]

FLAG_UP = 0x01
FLAG_UV = 0x04
FLAG_BE = 0x08
FLAG_BS = 0x10
FLAG_AT = 0x40

# The AAGUID this authenticator reports (a made-up model id, not all zeros, so tests see it stored).
SOFT_AAGUID = bytes.fromhex("5e1f50f7aa0b4c8e9d2d7f6b0e3a9c11")


class AuthenticatorRefused(Exception):
    """The authenticator (or browser) would refuse: an excluded credential, or none to answer with."""


def b64url(data: bytes) -> str:
    """Base64url without padding, as WebAuthn JSON uses."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Inverse of :func:`b64url`."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for info, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if value < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | info]) + struct.pack(fmt, value)
    raise ValueError("integer too large for CBOR")


def cbor_encode(value: object) -> bytes:
    """Encode the CBOR subset WebAuthn needs (RFC 8949): ints, bytes, text, bools, lists and maps.

    Map keys keep the caller's order (COSE keys are written in the order authenticators use).
    """
    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return _head(0, value) if value >= 0 else _head(1, -1 - value)
    if isinstance(value, bytes):
        return _head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _head(3, len(raw)) + raw
    if isinstance(value, list):
        return _head(4, len(value)) + b"".join(cbor_encode(item) for item in value)
    if isinstance(value, dict):
        return _head(5, len(value)) + b"".join(cbor_encode(k) + cbor_encode(v) for k, v in value.items())
    raise TypeError(f"cannot CBOR-encode {type(value).__name__}")


@dataclass
class SoftCredential:
    """One credential held by the authenticator."""

    credential_id: bytes
    private_key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    discoverable: bool
    sign_count: int = 0

    def cose_public_key(self) -> bytes:
        """The public key as a COSE_Key (EC2, P-256, ES256)."""
        numbers = self.private_key.public_key().public_numbers()
        return cbor_encode(
            {
                1: 2,  # kty: EC2
                3: -7,  # alg: ES256
                -1: 1,  # crv: P-256
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )


@dataclass
class SoftAuthenticator:
    """An authenticator and the browser around it, bound to one page origin.

    Args:
        origin: The page origin the browser reports in the client data.
        user_verifying: Whether it verifies the user (sets UV) unless told otherwise per call.
        backup_eligible: Sets BE (a syncable passkey); ``backed_up`` sets BS as well.
        counter_step: How much the signature counter grows per assertion; 0 = an authenticator that
            keeps no counter (always reports 0).
        transports: What the browser reports the authenticator can talk over.
    """

    origin: str
    user_verifying: bool = True
    backup_eligible: bool = False
    backed_up: bool = False
    counter_step: int = 1
    transports: tuple[str, ...] = ("usb",)
    credentials: dict[bytes, SoftCredential] = field(default_factory=dict)
    last_response: str | None = None

    # -- navigator.credentials.create() ---------------------------------------------------------------

    def create(
        self,
        options_json: str,
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        user_verified: bool | None = None,
        ignore_exclude: bool = False,
        reuse_credential: bytes | None = None,
    ) -> str:
        """Answer creation options with a registration response JSON.

        Args:
            options_json: ``PublicKeyCredentialCreationOptionsJSON`` from the relying party.
            origin: Report this origin instead of the page's (a phishing relay).
            rp_id: Hash this RP ID into the authenticator data instead of the requested one.
            user_verified: Override the UV flag for this response.
            ignore_exclude: Create even if an excluded credential is held (a broken client).
            reuse_credential: Attest an existing credential id (with a fresh key) instead of a new one.

        Returns:
            The ``RegistrationResponseJSON`` a browser would send.

        Raises:
            AuthenticatorRefused: A credential in ``excludeCredentials`` is held here.
        """
        options: dict[str, Any] = json.loads(options_json)
        requested_rp = str(options["rp"].get("id") or "")
        if not ignore_exclude:
            for descriptor in options.get("excludeCredentials") or []:
                if b64url_decode(descriptor["id"]) in self.credentials:
                    raise AuthenticatorRefused("InvalidStateError: credential already registered here")
        selection = options.get("authenticatorSelection") or {}
        discoverable = selection.get("residentKey") in ("required", "preferred")
        credential = SoftCredential(
            credential_id=reuse_credential or secrets.token_bytes(32),
            private_key=ec.generate_private_key(ec.SECP256R1()),
            rp_id=requested_rp,
            user_handle=b64url_decode(options["user"]["id"]),
            discoverable=discoverable,
        )
        self.credentials[credential.credential_id] = credential
        client_data = self._client_data("webauthn.create", options["challenge"], origin)
        attested = (
            SOFT_AAGUID
            + len(credential.credential_id).to_bytes(2, "big")
            + credential.credential_id
            + credential.cose_public_key()
        )
        auth_data = self._auth_data(
            rp_id or requested_rp, user_verified=user_verified, sign_count=0, attested=attested
        )
        attestation_object = cbor_encode({"fmt": "none", "attStmt": {}, "authData": auth_data})
        extensions: dict[str, Any] = {}
        if (options.get("extensions") or {}).get("credProps"):
            extensions["credProps"] = {"rk": discoverable}
        response = {
            "id": b64url(credential.credential_id),
            "rawId": b64url(credential.credential_id),
            "type": "public-key",
            "authenticatorAttachment": "cross-platform",
            "clientExtensionResults": extensions,
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation_object),
                "transports": list(self.transports),
            },
        }
        self.last_response = json.dumps(response)
        return self.last_response

    # -- navigator.credentials.get() ------------------------------------------------------------------

    def get(
        self,
        options_json: str,
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        user_verified: bool | None = None,
        sign_count: int | None = None,
        credential_id: bytes | None = None,
        user_handle: bytes | None = None,
        omit_user_handle: bool = False,
    ) -> str:
        """Answer request options with a signed authentication response JSON.

        Args:
            options_json: ``PublicKeyCredentialRequestOptionsJSON`` from the relying party.
            origin: Report this origin instead of the page's.
            rp_id: Hash this RP ID into the authenticator data instead of the requested one.
            user_verified: Override the UV flag for this response.
            sign_count: Report (and keep) this counter value instead of advancing it (a clone).
            credential_id: Answer with this held credential even if the options do not allow it.
            user_handle: Report this user handle instead of the credential's.
            omit_user_handle: Report none, even for a discoverable credential (a forged response).

        Returns:
            The ``AuthenticationResponseJSON`` a browser would send.

        Raises:
            AuthenticatorRefused: No held credential matches the options.
        """
        options: dict[str, Any] = json.loads(options_json)
        requested_rp = str(options.get("rpId") or "")
        credential = self._choose(options, requested_rp, credential_id)
        if sign_count is None:
            credential.sign_count += self.counter_step
        else:
            credential.sign_count = sign_count
        client_data = self._client_data("webauthn.get", options["challenge"], origin)
        auth_data = self._auth_data(
            rp_id or requested_rp, user_verified=user_verified, sign_count=credential.sign_count
        )
        signature = credential.private_key.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
        )
        handle = user_handle if user_handle is not None else credential.user_handle
        response = {
            "id": b64url(credential.credential_id),
            "rawId": b64url(credential.credential_id),
            "type": "public-key",
            "authenticatorAttachment": "cross-platform",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                # Authenticators return the handle for discoverable credentials (they store it).
                "userHandle": (
                    b64url(handle)
                    if (credential.discoverable or user_handle is not None) and not omit_user_handle
                    else None
                ),
            },
        }
        self.last_response = json.dumps(response)
        return self.last_response

    def replay(self) -> str:
        """The last response again, byte for byte (a captured response replayed)."""
        if self.last_response is None:
            raise AuthenticatorRefused("nothing to replay")
        return self.last_response

    # -- internals ------------------------------------------------------------------------------------

    def _choose(self, options: dict[str, Any], rp_id: str, wanted: bytes | None) -> SoftCredential:
        if wanted is not None:
            return self.credentials[wanted]
        allowed = [b64url_decode(d["id"]) for d in options.get("allowCredentials") or []]
        for credential in self.credentials.values():
            if credential.rp_id != rp_id:
                continue
            if (allowed and credential.credential_id in allowed) or (not allowed and credential.discoverable):
                return credential
        raise AuthenticatorRefused("NotAllowedError: no matching credential")

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        # Browsers serialise with the keys in this order and no spaces; the server hashes these bytes.
        document = {
            "type": kind,
            "challenge": challenge,
            "origin": origin or self.origin,
            "crossOrigin": False,
        }
        return json.dumps(document, separators=(",", ":")).encode()

    def _auth_data(
        self, rp_id: str, *, user_verified: bool | None, sign_count: int, attested: bytes = b""
    ) -> bytes:
        flags = FLAG_UP
        if self.user_verifying if user_verified is None else user_verified:
            flags |= FLAG_UV
        if self.backup_eligible:
            flags |= FLAG_BE
            if self.backed_up:
                flags |= FLAG_BS
        if attested:
            flags |= FLAG_AT
        return (
            hashlib.sha256(rp_id.encode()).digest()
            + bytes([flags])
            + sign_count.to_bytes(4, "big")
            + attested
        )
