"""``gateway keys …``: the keyring for secrets at rest and the keys that sign identity assertions.

    gateway keys init   --config FILE                              create the keyring file
    gateway keys rotate   --config FILE [--all | --signing | --keyring [--stage]] [--compromised [--leaked-since ISO]]
    gateway keys activate --config FILE KID [--compromised [--leaked-since ISO]]
    gateway keys mark-compromised --config FILE KID [--leaked-since ISO]
    gateway keys list     --config FILE [--json]

``rotate`` (default ``--all``) does both rotations:

* **signing**: a new ES256 key is published in ``/.gateway/jwks.json`` at once but signs only after
  ``assertion.publish_ahead``, so upstreams caching the JWKS know it before they meet it; the key it
  replaces signs until then and stays published for ``assertion.grace`` after that. Running gateways
  pick the new key up within 30 s, without a restart.
* **keyring**: a new AES-256-GCM key becomes active for new secrets; older keys stay for decryption.
  Gateways reading the same file take it up the first time they meet it. Replicas that each hold
  their own copy (a Kubernetes Secret) rotate in two steps: ``rotate --keyring --stage`` adds the key
  without making it active; once every replica has the new file, ``activate KID`` makes it active.

With ``--all`` the signing key is rotated first, so its private half is encrypted under the keyring
key every running gateway already holds.

A keyring key that leaked is *marked compromised* (``rotate --keyring --compromised``, ``activate KID
--compromised`` for the key that was active, ``mark-compromised KID`` for one rotated out before): it
still decrypts what it encrypted, never becomes active again, and the keyring file records the backups
it had signed and the audit chain's head. From then on ``backup verify|restore`` and ``dr drill`` refuse
every other backup under it and ``audit verify`` names every later record keyed under it: whoever
holds the leaked key can sign anything with it, but cannot write the keyring file. ``--leaked-since``
gives the earliest the key could have leaked, when it is known: backups made from then on are not
vouched for either (what the leaked key signed before the mark cannot be told from the gateway's own).

What the leaked key *encrypted* its holder can read from any copy of the database, so the same command
deals with it: a signing key whose private half is under it is rotated as compromised (after the
keyring, so the new one is under the new key; an attack run decrypted the old one from a backup and
forged assertions for anyone), and the output names the accounts whose authenticator-app (TOTP) seeds
are under it (they must enrol again: `gateway user reset-mfa`; the seeds are not re-encrypted, as they
are known), the sealed removed content under it, and the backups it encrypted.

``list`` shows each signing key's state: ``next`` (published, not signing yet), ``active`` (signing),
``retiring`` (published so its tokens still verify, no longer signing), ``expired`` (deleted at the
next rotation).

Exit codes: 0 done, 1 runtime failure (database or keyring unusable), 2 invalid input.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from gateway.cli.harness import (
    EXIT_OK,
    SubParsers,
    UserError,
    command_group,
    config_arg,
    load_config,
    load_keyring,
    open_store,
    operator,
    run,
)
from gateway.cli.leak import add_drop_unsettled_arg, add_leak_arg, check_leak

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection
    from pathlib import Path

    from gateway.audit.trail import AuditLog
    from gateway.cli.harness import Store
    from gateway.crypto.keyring import Compromise, Keyring
    from gateway.crypto.lifecycle import Rotation
    from gateway.crypto.signing import KeySet, SigningKeys
    from gateway.settings.schema import Settings
    from gateway.store.db import Database

# Heavy imports (SQLAlchemy, cryptography, the settings loader) happen when an action runs, not when
# the parser is built: `gateway --help` must not pay for them.

__all__ = ["register"]


def _when(moment: float | None) -> str:
    if moment is None:
        return "-"
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _signing_keys(settings: Settings, keyring: Keyring, db: Database) -> SigningKeys:
    from gateway.clock import SYSTEM_CLOCK
    from gateway.crypto.signing import SigningKeys

    return SigningKeys(db, keyring, SYSTEM_CLOCK, settings.assertion)


# -- actions ---------------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    from gateway.crypto.keyring import Keyring, keyring_path

    path = keyring_path(load_config(args))
    if path.exists():
        raise UserError(f"{path} already exists; use `gateway keys rotate` to add a new key")
    keyring = Keyring.create(path)  # its directory and the data directory above it: 0700 when created
    print(f"created {path} (mode 0600, active key {keyring.active_id}); give every replica this same file")
    return EXIT_OK


def _rotate(args: argparse.Namespace) -> int:
    from gateway.crypto.keyring import keyring_path
    from gateway.crypto.lifecycle import RotationTarget, rotate_keys

    if args.stage and args.what != "keyring":
        raise UserError("--stage stages a keyring key: give it with --keyring")
    if args.compromised and args.stage:
        raise UserError(
            "--compromised with --stage: a leaked keyring key must stop encrypting now; rotate in one "
            "step, or stage, give every replica the file, then `gateway keys activate KID --compromised`"
        )
    _check_leak(args)
    settings = load_config(args)
    path = keyring_path(settings)
    keyring = load_keyring(settings)

    async def rotate() -> None:
        from gateway.clock import SYSTEM_CLOCK
        from gateway.crypto.signing import announce_compromise
        from gateway.identity.ledger import AccountLedger, ledger_path

        async with open_store(settings, fast=True) as store:
            # Keyed under the active key when it records: the chain key follows rotations, old
            # records keep theirs.
            audit = store.audit(keyring)
            rotation = await rotate_keys(
                RotationTarget(args.what),
                signing=_signing_keys(settings, keyring, store.db),
                keyring=keyring,
                keyring_file=path,
                audit=audit,
                actor=operator(),
                stage=args.stage,
                compromised=args.compromised,
                announce=lambda at: announce_compromise(store.fast, at),
                ledger=AccountLedger(store.db, keyring, ledger_path(settings), SYSTEM_CLOCK),
                backups_signed=_backups_signed(settings, keyring, audit),
                leaked_since=args.leaked_since,
                drop_unsettled=args.drop_unsettled,
            )
            if rotation.signing is not None:
                _print_exposed_signing(rotation)
                _print_rotation(
                    rotation.signing.before,
                    rotation.signing.after,
                    rotation.signing.kid,
                    rotation.compromised,
                )
            if rotation.staged:
                print(
                    f"keyring {path}: staged key {rotation.keyring_key} (decrypts, encrypts nothing yet); "
                    f"give every replica this file, then run `gateway keys activate {rotation.keyring_key}`."
                )
            elif rotation.keyring_key is not None:
                print(
                    f"keyring {path}: new active key {rotation.keyring_key}; older keys stay for decryption. "
                    "Gateways reading this file pick the new key up the first time they meet it; "
                    "replicas with their own copy need the new file and a rolling restart."
                )
            if rotation.keyring_compromised is not None and rotation.keyring_mark is not None:
                _print_mark(path, rotation.keyring_compromised, rotation.keyring_mark, rotation.keyring_also)
                leaked = (rotation.keyring_compromised, *rotation.keyring_also)
                if rotation.signing is None:
                    print(f"signing key: none published is encrypted under {', '.join(leaked)}; not rotated")
                await _print_encrypted_under(store.db, leaked)

    run(rotate())
    return EXIT_OK


def _check_leak(args: argparse.Namespace) -> None:
    """``--leaked-since``: only with a mark, and not in the future (exit 2 before anything changes).
    ``mark-compromised`` has no ``--compromised``: it always marks, and only a keyring key."""
    check_leak(
        args.leaked_since,
        compromised=getattr(args, "compromised", True),
        signing_only=getattr(args, "what", "keyring") == "signing",
    )


def _backups_signed(
    settings: Settings, keyring: Keyring, audit: AuditLog
) -> Callable[[str, datetime | None], Awaitable[dict[str, str]]]:
    from gateway.backup.sets import backup_directory, vouching

    return vouching(backup_directory(settings), keyring, audit)


def _print_mark(path: object, kid: str, mark: Compromise, also: tuple[str, ...] = ()) -> None:
    kept = ", ".join(sorted(mark.backups)) or "none"
    made = f" before the leak ({mark.leaked_since})" if mark.leaked_since else ""
    print(
        f"keyring {path}: key {kid} marked compromised at {mark.at}. It still decrypts what it encrypted "
        f"and never becomes active again. Backups it had signed{made}, still trusted: {kept}; every other "
        "backup under it is refused by `backup verify`, `backup restore` and `dr drill` (make a new "
        f"backup now). Audit records keyed under it after record {mark.audit_seq} are named by "
        "`gateway audit verify`."
    )
    if also:
        print(
            f"keyring {path}: the older keys {', '.join(also)} were in the leaked file too: marked compromised "
            "with it (`gateway keys list` shows what each had signed)."
        )


async def _retire_exposed(
    settings: Settings, keyring: Keyring, store: Store, leaked: Collection[str]
) -> Rotation | None:
    """Rotate the signing key as compromised if its private half is under a leaked keyring key
    (:func:`gateway.crypto.lifecycle.retire_exposed_signing`), told to the running gateways."""
    from gateway.clock import SYSTEM_CLOCK
    from gateway.crypto.lifecycle import retire_exposed_signing
    from gateway.crypto.signing import announce_compromise
    from gateway.identity.ledger import AccountLedger, ledger_path

    return await retire_exposed_signing(
        _signing_keys(settings, keyring, store.db), keyring, leaked,
        announce=lambda at: announce_compromise(store.fast, at),
        ledger=AccountLedger(store.db, keyring, ledger_path(settings), SYSTEM_CLOCK),
    )  # fmt: skip


async def _refuse_unsettled(settings: Settings, keyring: Keyring, *, drop: bool) -> None:
    """Refuse to mark a key while this node's ledger holds changes the database lacks, unless
    ``drop`` (:func:`gateway.crypto.lifecycle.refuse_unsettled`), before anything changes."""
    from gateway.clock import SYSTEM_CLOCK
    from gateway.crypto.lifecycle import refuse_unsettled
    from gateway.identity.ledger import AccountLedger, ledger_path

    async with open_store(settings) as store:
        ledger = AccountLedger(store.db, keyring, ledger_path(settings), SYSTEM_CLOCK)
        await refuse_unsettled(ledger, drop=drop, audit=store.audit(keyring), actor=operator())


async def _resign_ledger(settings: Settings, keyring: Keyring, store: Store) -> None:
    """Write this node's account ledger lines again under the active keyring key now: those under the
    key just marked are no longer read (:meth:`gateway.identity.ledger.AccountLedger.resign`)."""
    from gateway.clock import SYSTEM_CLOCK
    from gateway.crypto.lifecycle import resign_ledger
    from gateway.identity.ledger import AccountLedger, ledger_path

    await resign_ledger(AccountLedger(store.db, keyring, ledger_path(settings), SYSTEM_CLOCK))


def _print_exposed_signing(rotation: Rotation) -> None:
    if rotation.signing_exposed:
        print(
            f"signing key: {', '.join(rotation.signing_exposed)} had its private half encrypted under a leaked "
            "keyring key (whoever holds it can sign assertions for anyone): rotated as compromised"
        )


async def _print_encrypted_under(db: Database, leaked: Collection[str]) -> None:
    """Say what else the leaked keyring keys encrypted, and what to do about it
    (:mod:`gateway.response.exposure`)."""
    import sys

    from gateway.errors import GatewayError
    from gateway.response.exposure import exposed_by

    try:
        exposure = await exposed_by(db, leaked)
    except GatewayError as exc:
        print(
            f"could not count what {', '.join(sorted(leaked))} encrypted ({exc.detail}): take every "
            "authenticator app enrolled before now as known (`gateway user reset-mfa USERNAME`)",
            file=sys.stderr,
        )
        return
    for line in exposure.lines():
        print(line)


def _keyring_holding(args: argparse.Namespace) -> tuple[Settings, Path, Keyring]:
    """The settings, the keyring file and the keyring, which must hold the key ``args.kid`` (exit 2)."""
    from gateway.crypto.keyring import keyring_path

    settings = load_config(args)
    path = keyring_path(settings)
    keyring = load_keyring(settings)
    if args.kid not in keyring.key_ids:
        raise UserError(f"no key {args.kid[:64]!r} in {path}; `gateway keys list` shows the key ids")
    return settings, path, keyring


def _mark(args: argparse.Namespace) -> int:
    from gateway.crypto.lifecycle import mark_compromised

    _check_leak(args)
    settings, path, keyring = _keyring_holding(args)
    if args.kid == keyring.active_id:
        raise UserError(
            f"key {args.kid} is the active key: `gateway keys rotate --keyring --compromised` makes a new "
            "key active and marks it in one step"
        )

    async def mark() -> None:
        await _refuse_unsettled(settings, keyring, drop=args.drop_unsettled)
        async with open_store(settings, fast=True) as store:
            audit = store.audit(keyring)
            # The signing key first (under the active key), then the mark, whose record names both.
            retired = await _retire_exposed(settings, keyring, store, [args.kid])
            details = {"keyring_key_compromised": args.kid, **(retired.details() if retired else {})}
            done = await mark_compromised(
                keyring, path, args.kid, audit=audit, actor=operator(), details=details,
                backups_signed=_backups_signed(settings, keyring, audit), leaked_since=args.leaked_since,
            )  # fmt: skip
            await _resign_ledger(settings, keyring, store)
            _print_mark(path, args.kid, done)
            _print_retired(retired, [args.kid])
            await _print_encrypted_under(store.db, [args.kid])

    run(mark())
    return EXIT_OK


def _print_retired(retired: Rotation | None, leaked: Collection[str]) -> None:
    if retired is None or retired.signing is None:
        print(f"signing key: none published is encrypted under {', '.join(leaked)}; not rotated")
        return
    _print_exposed_signing(retired)
    _print_rotation(retired.signing.before, retired.signing.after, retired.signing.kid, compromised=True)


def _print_rotation(before: KeySet, after: KeySet, kid: str, compromised: bool = False) -> None:
    from gateway.clock import SYSTEM_CLOCK

    now = SYSTEM_CLOCK.time()
    new = next(k for k in after.keys if k.kid == kid)
    if compromised:
        deleted = sorted(k.kid for k in before.keys if k.kid != kid)
        print(
            f"signing key: new key {kid} signs now; deleted as compromised: {', '.join(deleted) or 'none'} "
            "(gone from the JWKS, never signing again; apps that cached the JWKS trust them until they "
            "fetch it anew, at most its max-age of 60 s)"
        )
        return
    if new.active_from <= now:
        print(f"signing key: new key {kid} signs now (there was no key to hand over from)")
        return
    print(
        f"signing key: new key {kid} is published now and signs from {_when(new.active_from)} "
        f"(assertion.publish_ahead); running gateways load it within 30 s"
    )
    for old in before.keys:
        if old.retired_at is None:
            print(
                f"signing key: {old.kid} signs until {_when(new.active_from)} and stays published "
                f"until {_when(new.active_from + after.grace)} (assertion.grace)"
            )
    pruned = {k.kid for k in before.keys} - {k.kid for k in after.keys}
    if pruned:
        print(f"signing key: deleted expired key(s) {', '.join(sorted(pruned))}")


def _activate(args: argparse.Namespace) -> int:
    _check_leak(args)
    settings, path, keyring = _keyring_holding(args)
    if keyring.active_id == args.kid:
        print(f"keyring {path}: key {args.kid} is the active key already")
        return EXIT_OK
    if args.kid in keyring.compromised:
        raise UserError(f"key {args.kid} is marked compromised: it never becomes active again")
    from gateway.crypto.lifecycle import leaked_with

    old = keyring.active_id
    older = leaked_with(keyring, old, args.kid)
    if args.compromised:
        # Before the key is made active: nothing changed.
        run(_refuse_unsettled(settings, keyring, drop=args.drop_unsettled))
    keyring.activate(path, args.kid)

    async def record() -> None:
        from gateway.crypto.lifecycle import mark_compromised

        async with open_store(settings, fast=args.compromised) as store:
            audit = store.audit(keyring)
            details: dict[str, object] = {"keyring_key": args.kid}
            if not args.compromised:
                await audit.record("keys.activated", actor=operator(), subject="keys", details=details)
                return
            leaked = (old, *older)
            # Under the key just made active: the signing key first, then the mark naming both.
            retired = await _retire_exposed(settings, keyring, store, leaked)
            if retired is not None:
                details.update(retired.details())
            mark = await mark_compromised(
                keyring, path, old, audit=audit, actor=operator(),
                backups_signed=_backups_signed(settings, keyring, audit),
                details={**details, "keyring_key_compromised": old}, kind="keys.activated",
                also=older, leaked_since=args.leaked_since,
            )  # fmt: skip
            await _resign_ledger(settings, keyring, store)
            _print_mark(path, old, mark, older)
            _print_retired(retired, leaked)
            await _print_encrypted_under(store.db, leaked)

    run(record())
    print(
        f"keyring {path}: key {args.kid} is active for new secrets. Gateways reading this file take it up "
        "the first time they meet it; replicas with their own copy need this file (a rolling restart)."
    )
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    from gateway.clock import SYSTEM_CLOCK
    from gateway.crypto.keyring import Keyring, keyring_path
    from gateway.crypto.lifecycle import describe_key

    settings = load_config(args)
    path = keyring_path(settings)
    keyring = Keyring.load(path)

    async def load() -> KeySet:
        async with open_store(settings) as store:
            return await _signing_keys(settings, keyring, store.db).load(with_private=False)

    keyset = run(load())
    now = SYSTEM_CLOCK.time()
    rows = [describe_key(keyset, k, now) for k in keyset.keys]
    if args.json:
        doc = {
            "keyring": {
                "path": str(path),
                "active": keyring.active_id,
                "keys": sorted(keyring.key_ids),
                "compromised": {kid: mark.document() for kid, mark in sorted(keyring.compromised.items())},
            },
            "signing_keys": rows,
        }
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    print(f"keyring {path}: active key {keyring.active_id}; keys {', '.join(sorted(keyring.key_ids))}")
    for kid, mark in sorted(keyring.compromised.items()):
        print(
            f"keyring key {kid}: compromised since {mark.at} (trusted: {len(mark.backups)} backup(s) it had "
            f"signed{f' before the leak at {mark.leaked_since}' if mark.leaked_since else ''}, audit records "
            f"up to {mark.audit_seq})"
        )
    if not rows:
        print("no signing keys yet: a gateway creates the first one when it starts")
        return EXIT_OK
    for k in keyset.published(now):
        if k.keyring_kid in keyring.compromised:
            # Marked by a release whose mark left the signing key under it: its holder can sign assertions.
            print(
                f"signing key {k.kid}: its private half is encrypted under keyring key {k.keyring_kid}, marked "
                "compromised: run `gateway keys rotate --signing --compromised`"
            )
    table = [
        ("KID", "STATE", "CREATED", "SIGNS FROM", "SIGNS UNTIL", "PUBLISHED UNTIL", "KEYRING KEY"),
        *(
            (
                r["kid"],
                r["state"],
                _when(k.created_at),
                _when(k.active_from),
                _when(k.retired_at),
                _when(k.retired_at + keyset.grace if k.retired_at is not None else None),
                k.keyring_kid,
            )
            for r, k in zip(rows, keyset.keys, strict=True)
        ),
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------------------


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``gateway keys …`` to the ``gateway`` command's sub-commands.

    Args:
        sub: The sub-parsers action of the top-level parser. Every action sets ``func`` to a callable
            taking the parsed arguments and returning an exit code.
    """
    actions = command_group(
        sub,
        "keys",
        help="manage the keyring and the assertion-signing keys",
        description="Manage the AES-256-GCM keyring that encrypts secrets at rest (TOTP seeds, signing "
        "keys) and the ES256 keys that sign the identity assertion upstreams receive.",
    )

    p = actions.add_parser(
        "init",
        help="create the keyring file",
        description="Create the keyring file (mode 0600) with one fresh key. Every replica needs this same file.",
    )
    config_arg(p)
    p.set_defaults(func=_init)

    p = actions.add_parser(
        "rotate",
        help="rotate the signing key and/or the keyring (default: both)",
        description="Rotate the assertion-signing key (the new one is published now and signs after "
        "assertion.publish_ahead; the old one stays published for assertion.grace) and the keyring (a "
        "new key for new secrets; old keys stay for decryption).",
    )
    config_arg(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--all", dest="what", action="store_const", const="all", help="both (the default)")
    which.add_argument(
        "--signing", dest="what", action="store_const", const="signing", help="only the signing key"
    )
    which.add_argument(
        "--keyring", dest="what", action="store_const", const="keyring", help="only the keyring"
    )
    p.add_argument(
        "--stage",
        action="store_true",
        help="with --keyring: add the new key without making it active (activate it with `gateway keys "
        "activate KID` once every replica has the file)",
    )
    p.add_argument(
        "--compromised",
        action="store_true",
        help="the keys leaked. Signing: the new key signs at once and every old one is deleted (gone from "
        "the JWKS within 30 s, never signing again) instead of handed over; apps must fetch the JWKS anew. "
        "Keyring: the key that was active is marked compromised (decrypts, never active again; only the "
        "backups it had signed and the audit records before now stay trusted under it), the signing key "
        "is rotated as compromised if its private half is under it, and the accounts whose TOTP seeds it "
        "encrypted are listed (they must enrol again)",
    )
    add_leak_arg(p)
    add_drop_unsettled_arg(p)
    p.set_defaults(func=_rotate, what="all")

    p = actions.add_parser(
        "activate",
        help="make a staged keyring key the active one",
        description="Make a keyring key already in the file (one added by `rotate --keyring --stage`) the key "
        "new secrets are encrypted under. Run it once every replica has the file with that key.",
    )
    config_arg(p)
    p.add_argument("kid", metavar="KID", help="the key id (`gateway keys list` shows them)")
    p.add_argument(
        "--compromised",
        action="store_true",
        help="the key that was active leaked: mark it compromised once KID is active (see mark-compromised; "
        "as with rotate --compromised, a signing key under it is rotated and the TOTP seeds under it named)",
    )
    add_leak_arg(p)
    add_drop_unsettled_arg(p)
    p.set_defaults(func=_activate)

    p = actions.add_parser(
        "mark-compromised",
        help="mark a keyring key that is no longer active as leaked",
        description="Mark a keyring key that is no longer active as compromised: it still decrypts what it "
        "encrypted but never becomes active again, and the keyring file records the backups it had signed "
        "and the audit chain's head. From then on backup verify/restore and dr drill refuse every other "
        "backup under it, and audit verify names every later record keyed under it. A key marked once stays "
        "marked with what it had signed then. A signing key whose private half it encrypted is rotated as "
        "compromised, and the accounts whose TOTP seeds it encrypted are named (they must enrol again).",
    )
    config_arg(p)
    p.add_argument("kid", metavar="KID", help="the key id (`gateway keys list` shows them)")
    add_leak_arg(p)
    add_drop_unsettled_arg(p)
    p.set_defaults(func=_mark)

    p = actions.add_parser(
        "list",
        help="show the keyring and the signing keys with their state",
        description="Show the active keyring key and every signing key: next, active, retiring or expired, "
        "with the times it was created, signs from, signs until and stays published until (UTC).",
    )
    config_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_list)
