"""The self-service portal: profile, second factors, recovery codes, sessions, password.

Sensitive changes (adding or removing a factor, new recovery codes, a new password) need a second
factor used within ``mfa.reauth_max_age``; a user enrolling their very first factor needs a fresh
password sign-in instead. Otherwise the browser is sent to the MFA page and comes back here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Final
from urllib.parse import quote

from litestar import Request, get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template

from gateway.errors import GatewayError
from gateway.factors.last import OnlyFactor
from gateway.identity.levels import AuthLevel, Factor
from gateway.identity.sessions import Session, browser_label
from gateway.services import IdentityServices
from gateway.settings.current import CurrentConfig
from gateway.store.ids import parse_id
from gateway.web import flows
from gateway.web.deps import Config, Identity
from gateway.web.flows import AnyRequest
from gateway.web.gate import Step, admits
from gateway.web.pages import Form, page
from gateway.web.rights import step_up_location, when

__all__ = ["HANDLERS"]


def _when(value: datetime | float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float | int):
        return when(value)
    # A stored datetime may be naive (UTC by convention): formatted as is, never converted.
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _step_up(back: str, kind: str = "") -> Redirect:
    """The second-factor page, coming back to ``back``; a passkey's removal asks for a passkey."""
    return Redirect(step_up_location(back, need="webauthn" if kind == "webauthn" else "any"))


async def _confirm_first(identity: IdentityServices, signed: flows.SignedIn, back: str) -> Redirect:
    """Where a change that needs "confirm it's you" goes when this sign-in is too old for it: the
    second-factor page, or, for an account that has no second factor to confirm with, a new sign-in
    (its password is the proof). The second-factor page had nothing to offer such an account and sent
    it back to enrolment, which sent it to the second-factor page, for ever."""
    assert signed.session is not None
    if await flows.has_second_factor(identity, signed.session.user_id):
        return _step_up(back)
    if signed.session_id is not None:
        await identity.sessions.revoke(signed.session_id)
    return flows.login_redirect(back)


def _factor_name(name: str, kind_label: str, created: datetime | None) -> str:
    """The name to show: the user's own, else (a factor still named after its type, as every
    authenticator app is when added) its type and the day it was added, which tells two apart."""
    if name != kind_label or created is None:
        return name
    return f"{kind_label} added {created.strftime('%Y-%m-%d')}"


async def _factors(identity: IdentityServices, user_id: int) -> list[dict[str, Any]]:
    """The user's second factors as the portal lists them."""
    listed = [
        ("totp", c.id, c.name, "Authenticator app", c.created_at, c.last_used_at)
        for c in await identity.totp.list(user_id)
    ] + [
        (
            "webauthn",
            c.id,
            c.name,
            "Passkey" if c.discoverable else "Security key",
            c.created_at,
            c.last_used_at,
        )
        for c in await identity.webauthn.list(user_id)
    ]
    return [
        {
            "kind": kind,
            "id": factor_id,
            "name": _factor_name(name, label, created),
            "kind_label": label,
            "created": _when(created),
            "last_used": _when(last_used),
        }
        for kind, factor_id, name, label, created, last_used in listed
    ]


@get("/.gateway/account", cache=False)
async def portal(
    request: Request[Any, Any, Any], config: Config, identity: Identity, notice: FromQuery[str] = ""
) -> Template | Redirect:
    signed = await flows.current(request, config, identity)
    if signed.session is None:
        return flows.login_redirect("/.gateway/account")
    s = signed.session
    user = await identity.accounts.get(s.user_id)
    factors = await _factors(identity, s.user_id)
    own = s.id_hash
    # This browser's sessions on the applications' hosts (the same sign-in) are shown as this
    # browser's, with their host, not as other sessions someone else might hold.
    sessions = [
        {
            "id": other.id_hash,
            "browser": browser_label(other.user_agent),
            "ip": other.ip,
            "last_seen": _when(other.last_seen),
            "current": other.id_hash == own,
            "this_browser_on": other.host if other.family == s.family and other.id_hash != own else "",
        }
        for other in await identity.sessions.list_user(s.user_id)
    ]
    return page(
        request,
        "account.html",
        user=s.username,
        account=user,
        two_factor=s.level >= AuthLevel.TWO_FACTOR,
        factors=factors,
        sessions=sessions,
        recovery_remaining=await identity.recovery.remaining(s.user_id),
        notice=notice,
        error=None,
    )


@get("/.gateway/account/enroll", cache=False, opt=admits(Step.ENROLL))
async def enroll(
    request: Request[Any, Any, Any], config: Config, identity: Identity, rd: FromQuery[str] = ""
) -> Template | Redirect:
    # Checked where it enters, as every page does (an attack run found it carried into the form and
    # the script's data unchecked; every later use checked it, but nothing unchecked is rendered).
    rd = flows.carried_rd(rd, config)
    signed = await flows.current(request, config, identity)
    if signed.session is None:
        return flows.login_redirect(f"/.gateway/account/enroll?rd={quote(rd, safe='')}")
    s = signed.session
    if not await flows.may_change_factors(s, config, identity):
        return await _confirm_first(identity, signed, f"/.gateway/account/enroll?rd={quote(rd, safe='')}")
    # Bound to this sign-in: another session of the account can neither read the seed nor confirm it.
    enrollment = await identity.totp.begin_enrollment(
        s.user_id, account=s.username, name="Authenticator app", bound_to=s.family
    )
    return page(
        request,
        "enroll.html",
        user=s.username,
        rd=rd,
        qr_svg=enrollment.qr_svg,
        secret=enrollment.secret,
        credential_id=enrollment.credential_id,
        error=None,
    )


@post("/.gateway/account/totp/confirm", status_code=200, opt=admits(Step.ENROLL))
async def totp_confirm(
    request: Request[Any, Any, Any], config: Config, identity: Identity, data: Form
) -> Template | Redirect:
    signed = await flows.current(request, config, identity)
    rd = data.get("rd", "")
    if signed.session is None or signed.session_id is None:
        return flows.login_redirect("/.gateway/account/enroll")
    s = signed.session
    if not await flows.may_change_factors(s, config, identity):
        return await _confirm_first(identity, signed, "/.gateway/account/enroll")
    first = await flows.enrolls_first(identity, s)
    credential_id = parse_id(data.get("credential_id", ""), what="enrollment id")
    if not await identity.totp.confirm(s.user_id, credential_id, data.get("code", ""), bound_to=s.family):
        # Keep the seed the user has just scanned while the enrollment lasts; only an expired
        # (or foreign: another sign-in's) one is replaced by a new seed to scan.
        enrollment = await identity.totp.pending_enrollment(
            s.user_id, credential_id, account=s.username, bound_to=s.family
        )
        rescan = enrollment is None
        if enrollment is None:
            enrollment = await identity.totp.begin_enrollment(
                s.user_id, account=s.username, name="Authenticator app", bound_to=s.family
            )
        return page(
            request,
            "enroll.html",
            status=400,
            user=s.username,
            rd=rd,
            qr_svg=enrollment.qr_svg,
            secret=enrollment.secret,
            credential_id=enrollment.credential_id,
            error=(
                "That code did not match. Scan the new code below and try again."
                if rescan
                else "That code did not match. Check the time on your phone and enter the current code."
            ),
        )
    await identity.audit.record(
        "factor.enrolled",
        actor=f"user:{s.username}",
        subject=s.username,
        ip=flows.client_ip(request),
        details={"kind": "totp"},
    )
    undo = partial(identity.totp.remove, s.user_id, credential_id)
    return await _after_enrollment(
        request, config, identity, signed.session_id, s, rd, first, Factor.TOTP, undo=undo
    )


@get("/.gateway/account/factors/{kind:str}/{factor_id:str}/remove", cache=False)
async def confirm_remove(
    request: Request[Any, Any, Any],
    config: Config,
    identity: Identity,
    kind: FromPath[str],
    factor_id: FromPath[str],
) -> Template | Redirect:
    """Which factor a removal would take, and a form (CSRF-protected) to remove it: where the step-up
    that a removal needs comes back to, so the person confirms the same factor instead of starting over.
    A GET only shows: nothing is removed without the form's POST."""
    here = f"/.gateway/account/factors/{quote(kind, safe='')}/{quote(factor_id, safe='')}/remove"
    signed = await flows.current(request, config, identity)
    if signed.session is None:
        return flows.login_redirect(here)
    s = signed.session
    credential_id = parse_id(factor_id, what="factor id")  # 400, never a database error
    factor = next(
        (f for f in await _factors(identity, s.user_id) if (f["kind"], f["id"]) == (kind, credential_id)),
        None,
    )
    if factor is None:
        return Redirect("/.gateway/account?notice=Nothing+was+removed.")
    if not flows.may_remove(s, kind, config, identity.clock):
        return _step_up(here, kind)
    return page(request, "remove_factor.html", user=s.username, factor=factor)


@post("/.gateway/account/factors/{kind:str}/{factor_id:str}/remove", status_code=303)
async def remove_factor(
    request: Request[Any, Any, Any],
    config: Config,
    identity: Identity,
    kind: FromPath[str],
    factor_id: FromPath[str],
) -> Redirect:
    signed = await flows.current(request, config, identity)
    if signed.session is None or signed.session_id is None:
        return flows.login_redirect("/.gateway/account")
    s = signed.session
    credential_id = parse_id(factor_id, what="factor id")  # 400, never a database error
    if not flows.may_remove(s, kind, config, identity.clock):
        # Back to this factor's confirmation after the second factor, not to the list.
        return _step_up(f"/.gateway/account/factors/{quote(kind, safe='')}/{credential_id}/remove", kind)
    removed = False
    try:
        if kind == "totp":
            removed = await identity.totp.remove(s.user_id, credential_id, keep_one=True)
        elif kind == "webauthn":
            ip = flows.client_ip(request)
            removed = await identity.webauthn.remove(s.user_id, credential_id, ip=ip, keep_one=True)
    except OnlyFactor:
        return Redirect(f"/.gateway/account?notice={quote(_ONLY_FACTOR)}", status_code=303)
    if removed and kind == "totp":
        await identity.audit.record(
            "factor.removed",
            actor=f"user:{s.username}",
            subject=s.username,
            ip=flows.client_ip(request),
            details={"kind": "totp"},
        )
    if not removed:
        return Redirect("/.gateway/account?notice=Nothing+was+removed.", status_code=303)
    ended, new_id = await _end_others_after(request, identity, s, signed.session_id, "factor.removed")
    note = f"Factor removed. {_signed_out(ended)}"
    response = Redirect(f"/.gateway/account?notice={quote(note)}", status_code=303)
    flows.set_session_cookie(response, config, new_id)
    return response


# Removing the last one left the account on trust on first use (gateway.factors.last); the host's
# operator does that on purpose with `gateway user reset-mfa --invite`, which also takes the password away.
_ONLY_FACTOR: Final = (
    "This is your only second factor: add another (an authenticator app or a passkey) first, then "
    "remove this one. Nothing was removed."
)


@post("/.gateway/account/factors/{kind:str}/{factor_id:str}/rename", status_code=303)
async def rename_factor(
    request: Request[Any, Any, Any],
    config: Config,
    identity: Identity,
    kind: FromPath[str],
    factor_id: FromPath[str],
    data: Form,
) -> Redirect:
    signed = await flows.current(request, config, identity)
    if signed.session is None:
        return flows.login_redirect("/.gateway/account")
    s = signed.session
    credential_id = parse_id(factor_id, what="factor id")  # 400, never a database error
    if not flows.may_rename(s, kind, config, identity.clock):
        # A stale, stolen cookie renamed the owner's app "LOST phone - remove me" (a re-attack run):
        # a name tells the owner which factor to remove. A passkey asks what its removal asks, one of
        # the passkeys used fresh (a phished code relabelled the owner's passkey: an attack run).
        return _step_up("/.gateway/account", kind)
    name = " ".join(data.get("name", "").split())[:60]
    renamed = False
    if name and kind == "totp":
        renamed = await identity.totp.rename(s.user_id, credential_id, name)
    elif name and kind == "webauthn":
        renamed = await identity.webauthn.rename(s.user_id, credential_id, name)
    if renamed:
        await identity.audit.record(
            "factor.renamed",
            actor=f"user:{s.username}",
            subject=s.username,
            ip=flows.client_ip(request),
            details={"kind": kind},
        )
    note = "Renamed." if renamed else "Nothing was renamed."
    return Redirect(f"/.gateway/account?notice={quote(note)}", status_code=303)


@post("/.gateway/account/recovery", status_code=200)
async def new_recovery(
    request: Request[Any, Any, Any], config: Config, identity: Identity
) -> Template | Redirect:
    signed = await flows.current(request, config, identity)
    if signed.session is None or signed.session_id is None:
        return flows.login_redirect("/.gateway/account")
    s = signed.session
    if not flows.is_fresh(s, config, identity.clock):
        return _step_up("/.gateway/account")
    codes = await flows.codes_for_live_session(identity, s)
    await identity.audit.record(
        "recovery_codes.generated",
        actor=f"user:{s.username}",
        subject=s.username,
        ip=flows.client_ip(request),
    )
    ended, new_id = await _end_others_after(
        request, identity, s, signed.session_id, "recovery_codes.generated"
    )
    notice = f"Your old codes no longer work. {_signed_out(ended)}"
    shown = page(request, "codes.html", user=s.username, codes=codes, next="/.gateway/account", notice=notice)
    flows.set_session_cookie(shown, config, new_id)
    return shown


@post("/.gateway/account/sessions/{session_hash:str}/revoke", status_code=303)
async def revoke_one(
    request: Request[Any, Any, Any], config: Config, identity: Identity, session_hash: FromPath[str]
) -> Redirect:
    signed = await flows.current(request, config, identity)
    if signed.session is None:
        return flows.login_redirect("/.gateway/account")
    s = signed.session
    if not flows.is_fresh(s, config, identity.clock):
        # As for all of them at once: a stolen, older cookie looped over the list one by one (an
        # attack run signed the owner out everywhere that way).
        return _step_up("/.gateway/account")
    if session_hash != s.id_hash and await flows.end_listed_session(identity, s, session_hash):
        await identity.audit.record(
            "session.revoked", actor=f"user:{s.username}", subject=s.username, ip=flows.client_ip(request)
        )
    return Redirect("/.gateway/account?notice=Session+signed+out.", status_code=303)


@post("/.gateway/account/sessions/revoke-others", status_code=303)
async def revoke_others(request: Request[Any, Any, Any], config: Config, identity: Identity) -> Redirect:
    signed = await flows.current(request, config, identity)
    if signed.session is None or signed.session_id is None:
        return flows.login_redirect("/.gateway/account")
    if not flows.is_fresh(signed.session, config, identity.clock):
        # A stolen, older cookie must not sign the owner out everywhere (a re-attack run).
        return _step_up("/.gateway/account")
    # Every session the list shows as another one ends, this browser's on the applications' hosts
    # too (they come back through the hand-off at the next visit): an attack run had a copied
    # app-host cookie outlive "Sign out all other sessions", which kept this sign-in's family.
    count, new_id = await _end_others_after(
        request, identity, signed.session, signed.session_id, "sign-out-others"
    )
    response = Redirect(f"/.gateway/account?notice={quote(_signed_out(count))}", status_code=303)
    flows.set_session_cookie(response, config, new_id)
    return response


@get("/.gateway/account/password", cache=False, opt=admits(Step.PASSWORD_CHANGE))
async def password_page(
    request: Request[Any, Any, Any], config: Config, identity: Identity, rd: FromQuery[str] = ""
) -> Template | Redirect:
    signed = await flows.current(request, config, identity)
    if signed.session is None:
        return flows.login_redirect("/.gateway/account/password")
    user = await identity.accounts.get(signed.session.user_id)
    forced = bool(user and user.must_change_password)
    if signed.session.password_change and not forced and signed.session_id:
        # The one-time password was replaced elsewhere (another browser, an admin): this session was
        # opened with a password that no longer works, by its owner or by whoever else read it. It
        # ends; its owner signs in with the new password. (Lifting the hold, as this did, gave someone
        # who had read the one-time password a full session; an attack run enrolled its own factor.)
        await identity.sessions.revoke(signed.session_id)
        return flows.login_redirect(rd or None)
    if not forced and not await flows.may_change_factors(signed.session, config, identity):
        return await _confirm_first(identity, signed, "/.gateway/account/password")
    return page(
        request,
        "password.html",
        user=signed.session.username,
        rd=rd,
        forced=forced,
        error=None,
        min_length=config.settings.passwords.min_length,
    )


@get("/.gateway/account/first-codes", cache=False)
async def first_codes(
    request: Request[Any, Any, Any], config: Config, identity: Identity
) -> Template | Redirect:
    """After the first passkey: show recovery codes once, to the session that registered it.

    Only with the single-use grant that registration left for this very session: otherwise a
    password-only session of a user without unused codes could mint ten and pass the second
    factor with one (the gate already keeps one-factor sessions out; this holds on its own).
    """
    signed = await flows.current(request, config, identity)
    if signed.session is None:
        return flows.login_redirect("/.gateway/account")
    s = signed.session
    if s.level < AuthLevel.TWO_FACTOR or not await identity.first_codes.redeem(s.id_hash):
        return Redirect("/.gateway/account")
    codes = await flows.codes_for_live_session(identity, s)
    return page(request, "codes.html", user=s.username, codes=codes, next="/.gateway/account")


@post("/.gateway/account/password", status_code=200, opt=admits(Step.PASSWORD_CHANGE))
async def password_submit(
    request: Request[Any, Any, Any], config: Config, identity: Identity, data: Form
) -> Template | Redirect:
    signed = await flows.current(request, config, identity)
    rd = data.get("rd", "")
    if signed.session is None or signed.session_id is None:
        return flows.login_redirect("/.gateway/account/password")
    s = signed.session
    user = await identity.accounts.get(s.user_id)
    forced = bool(user and user.must_change_password)
    if not forced and not await flows.may_change_factors(s, config, identity):
        return await _confirm_first(identity, signed, "/.gateway/account/password")
    error = None
    if data.get("new", "") != data.get("confirm", ""):
        error = "The two new passwords are not the same."
    else:
        try:
            await identity.accounts.set_password(
                s.user_id,
                data.get("new", ""),
                actor=f"user:{s.username}",
                current_password=data.get("current", ""),
                # The address: a wrong current password is a failed step of the account, and the
                # brute_force rule's block_ip blocks it (a re-attack run's guesses had none to block).
                ip=flows.client_ip(request),
                # This browser's own counter: someone failing the password elsewhere does not stop a
                # signed-in person from changing it.
                regulate_as=await flows.regulation_key(request, config, identity, s),
            )
        except GatewayError as err:
            if err.status >= 500:
                raise  # an outage: the error handler logs the detail and shows a plain page
            error = err.public_detail
    if error:
        return page(
            request,
            "password.html",
            status=400,
            user=s.username,
            rd=rd,
            forced=forced,
            error=error,
            min_length=config.settings.passwords.min_length,
        )
    if forced or s.password_change:
        # Other browsers may have signed in with the old password: their sessions end. The hold on
        # this session is lifted with a new id; the sign-in goes on to the second factor (or its
        # enrollment).
        await _end_other_browsers(identity, s)
        new_id, renewed = await identity.sessions.password_changed(signed.session_id)
        if renewed.level >= AuthLevel.TWO_FACTOR:
            # The second factor came first (an account that has one): the sign-in is complete. The
            # second-factor page would ask for the code just used (a re-attack run).
            return await flows.after_sign_in(request, config, identity, new_id, renewed, rd)
        response = Redirect(f"/.gateway/mfa?rd={quote(rd, safe='')}", status_code=303)
        flows.set_session_cookie(response, config, new_id)
        return response
    ended, new_id = await _end_others_after(request, identity, s, signed.session_id, "user.password_changed")
    note = f"Password changed. {_signed_out(ended)}"
    response = Redirect(f"/.gateway/account?notice={quote(note)}", status_code=303)
    flows.set_session_cookie(response, config, new_id)
    # The new password ended the account's device cookies (gateway.identity.devices); this browser has
    # just proven the current one and keeps a known device of the new generation.
    await flows.remember_device(request, response, config, identity, s)
    return response


#: The portal's handlers, registered on the control app (``web/app.py``).
HANDLERS: Final = (
    portal,
    enroll,
    totp_confirm,
    confirm_remove,
    remove_factor,
    rename_factor,
    new_recovery,
    revoke_one,
    revoke_others,
    password_page,
    password_submit,
    first_codes,
)


async def _end_other_browsers(identity: IdentityServices, session: Session) -> int:
    """End the user's sessions outside this sign-in's family (this browser's other hosts stay)."""
    return await identity.sessions.end_others(
        session.user_id, keep=session.id_hash, keep_family=session.family
    )


async def _end_others_after(
    request: AnyRequest, identity: IdentityServices, session: Session, session_id: str, change: str
) -> tuple[Ended, str]:
    """After a change of the account's credentials (a new password, a removed factor, new recovery codes):
    end every session but this one, and give this one a new id. Returns what was ended, and this
    session's new id (the caller sets the cookie).

    A password is changed, a factor removed or the codes replaced because it may be in someone else's
    hands: a session it vouched for must not outlive it (an admin's reset of the factors ends every
    session for the same reason). Sessions do not record which credential they used, so every other
    browser ends. This browser's sessions on the other hosts end too, and this one's id changes: a copy of
    any of its cookies must not outlive the change either; the browser gets new ones through the
    hand-off at its next visit. This session has just passed a recent second factor.
    """
    # This session moves to a sign-in of its own first, then the old sign-in ends whole (its family
    # record taken: a hand-off in flight from it cannot join it any more), then every other browser's.
    new_id, renewed = await identity.sessions.renew(session_id)
    # A provider's logout must still find it (its record moves with it).
    await identity.oidc.carry(session.family, renewed.family)
    own_hosts = await identity.sessions.revoke_family(session.family)
    others = await identity.sessions.revoke_others(new_id, session.user_id)
    await identity.audit.record(
        "session.revoked",
        actor=f"user:{session.username}",
        subject=session.username,
        ip=flows.client_ip(request),
        details={"others": others + own_hosts, "other_browsers": others, "after": change},
    )
    return Ended(others, own_hosts), new_id


async def _after_enrollment(
    request: AnyRequest,
    config: CurrentConfig,
    identity: IdentityServices,
    session_id: str,
    session: Session,
    rd: str,
    first: bool,
    factor: Factor,
    *,
    undo: Callable[[], Awaitable[object]],
) -> Template | Redirect:
    """A new id (the first factor makes the session two-factor, see flows.after_enrolling); first
    time, show the recovery codes. ``undo`` removes the new factor if the session ended meanwhile."""
    new_id, new_session = await flows.after_enrolling(
        identity, session_id, first=first, factor=factor, undo=undo
    )
    if first:
        codes = await flows.codes_for_live_session(identity, new_session)
        next_url = flows.safe_rd(rd, config) if rd else "/.gateway/account"
        if next_url != "/.gateway/account" and not next_url.startswith("/"):
            # Cross-host return: go through login, which hands the session over.
            next_url = f"/.gateway/login?rd={quote(rd, safe='')}"
        response = page(request, "codes.html", user=session.username, codes=codes, next=next_url)
        flows.set_session_cookie(response, config, new_id)
        return response
    # A factor enrolled proves nothing but a fresh session (its seed was chosen a second ago): no new
    # known device (an attack run enrolled five authenticator apps for five device cookies).
    return await flows.after_sign_in(
        request, config, identity, new_id, new_session, rd or "/.gateway/account", proven=False
    )


@dataclass(frozen=True, slots=True)
class Ended:
    """What ending the other sessions ended: other browsers' sessions, and this browser's own on the
    applications' hosts (counted apart: a person who signed in once is not told two were signed out)."""

    others: int
    own_hosts: int


def _signed_out(ended: Ended) -> str:
    """What ending the other sessions did, in words (not "0 other session(s) signed out")."""
    said = (
        "No other session was signed in."
        if ended.others == 0
        else f"{ended.others} other session{'' if ended.others == 1 else 's'} signed out."
    )
    if ended.own_hosts:
        said += " This browser signs in to the applications again at its next visit."
    return said
