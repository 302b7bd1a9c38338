"""Password hashing with argon2id, off the event loop, and the password policy (NIST SP 800-63B).

Hashing is deliberately slow (tens of milliseconds of CPU and 19+ MiB of memory per hash), so it never
runs on the event loop: each hash runs in a worker thread, and at most
``PasswordSettings.max_concurrent_hashes`` run at once per worker. A burst of sign-ins then queues on
the semaphore instead of starving the proxied traffic of CPU (docs/architecture.md, invariant 5). The hashing
threads also run at a lower scheduling priority (nice +10, Linux schedules threads on their own): when
the CPU is contended, the event loop that proxies requests goes first and the hash waits a little.
That ordering holds inside the gateway's own scheduling group only: with autogroups (or one cgroup per
service), a hash delays the wake-ups of *other* groups' processes on its core (the upstream, a local
load client) by up to a scheduler tick whatever its priority, which is why the benchmark measures the
sign-ins against the same hashes made outside the gateway (``loadtests/README.md``, the sign-in phase).

Unknown users cost the same as wrong passwords: :meth:`PasswordHasher.verify` with no stored hash
checks the password against a dummy hash made with the same parameters, so response time does not
reveal which accounts exist.

Passwords are NFKC-normalised before hashing (SP 800-63B §5.1.1.2): the same passphrase typed on two
keyboards that produce different Unicode forms of one character must match. Nothing else is changed;
spaces are kept.

Which new passwords are acceptable is :mod:`gateway.identity.password_policy`'s business;
:meth:`PasswordHasher.check_new` applies it with the configured minimum length, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
import unicodedata
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gateway.identity.password_policy import MAX_PASSWORD_CHARS, MAX_TYPED_CHARS, check_password
from gateway.settings.schema import PasswordSettings

__all__ = ["MAX_PASSWORD_CHARS", "PasswordHasher", "one_time_password"]

logger = logging.getLogger(__name__)

# What the dummy hash is made from. Its value does not matter: nobody can sign in against it, because
# verify() returns False whenever there is no stored hash, whatever the dummy check says.
_DUMMY_PASSWORD: Final = "gateway dummy password for absent accounts"  # noqa: S105 - not a credential

#: How much nicer than the event loop the hashing threads are (the nice value they add).
HASH_THREAD_NICENESS: Final = 10

_T = TypeVar("_T")


def one_time_password() -> str:
    """A password an admin hands out once (the quick start's first admin, a console-created user).

    Three groups of eight URL-safe characters (144 random bits), easy to read out and to type; the
    account is created with ``must_change_password`` so it is replaced at the first sign-in.
    """
    return "-".join(secrets.token_urlsafe(6) for _ in range(3))


def _lower_priority() -> None:
    # Per thread: on Linux setpriority(PRIO_PROCESS, tid) applies to that thread only. Lowering needs no
    # privilege; where the platform refuses, hashing simply runs at normal priority.
    try:
        tid = threading.get_native_id()
        os.setpriority(
            os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + HASH_THREAD_NICENESS)
        )
    except (OSError, AttributeError):
        logger.debug("could not lower the priority of the password-hashing thread", exc_info=True)


class PasswordHasher:
    """argon2id hashing and verification with the configured cost, bounded in concurrency.

    One instance per worker: the semaphore is what bounds the CPU spent on hashing.
    """

    def __init__(self, settings: PasswordSettings) -> None:
        """Build the hasher.

        Args:
            settings: argon2id cost (memory, time, parallelism), concurrency bound and minimum length.
                Values below OWASP's minimum are refused by the config loader, not here, so tests may
                use cheap parameters.
        """
        self._settings = settings
        self._argon = argon2.PasswordHasher(
            time_cost=settings.time_cost,
            memory_cost=settings.memory_kib,
            parallelism=settings.parallelism,
            hash_len=32,
            salt_len=16,
            type=argon2.Type.ID,
        )
        self._slots = asyncio.Semaphore(max(1, settings.max_concurrent_hashes))
        self._threads = ThreadPoolExecutor(
            max_workers=max(1, settings.max_concurrent_hashes),
            thread_name_prefix="argon2",
            initializer=_lower_priority,
        )
        self._dummy: str | None = None

    @property
    def settings(self) -> PasswordSettings:
        """The settings this hasher was built with."""
        return self._settings

    async def hash(self, password: str) -> str:
        """Hash a password for storage.

        Args:
            password: The password as typed (normalised to NFKC here).

        Returns:
            An argon2id PHC string (``$argon2id$v=19$m=...,t=...,p=...$salt$hash``).
        """
        normalised = _normalise(password)
        async with self._slots:
            return await self._in_thread(self._argon.hash, normalised)

    async def verify(self, stored: str | None, password: str) -> bool:
        """Check a password against a stored hash, at the same cost whether or not there is one.

        Args:
            stored: The stored PHC string, or None for an unknown account or one without a password.
            password: The password as typed.

        Returns:
            True only if ``stored`` is a hash of ``password``. Always False when ``stored`` is None
            (after checking against the dummy hash, so the time taken is the same).
        """
        if len(password) > MAX_TYPED_CHARS:
            # No password that long was ever set (check_password refuses it), and normalising it
            # first held the event loop for a second a megabyte (an attack run's sign-ins): it fails
            # at once, for every account alike, so its speed tells nothing about one.
            return False
        normalised = _normalise(password)
        if stored is None:
            await self._dummy_check(normalised)
            return False
        return await self._check(stored, normalised)

    def needs_rehash(self, stored: str) -> bool:
        """Whether ``stored`` was made with other parameters than the configured ones.

        Call after a successful verification, when the password is at hand to hash again.

        Args:
            stored: A PHC string.

        Returns:
            True if it should be replaced by a hash with the current parameters (also for a hash this
            hasher cannot parse, which cannot have the current parameters).
        """
        try:
            return self._argon.check_needs_rehash(stored)
        except InvalidHashError:
            return True

    def check_policy(self, password: str, *, personal: Sequence[str] = ()) -> str | None:
        """Check a new password against the policy (SP 800-63B §5.1.1.2; no composition rules).

        Blocks for up to 0.1 s the first time in a process (the password lists are loaded) and up to
        3 ms for a very long password: on an event loop, use :meth:`check_new`.

        Args:
            password: The proposed password.
            personal: The account's username, email address and display name: a password built from
                them is refused.

        Returns:
            None if acceptable, otherwise a message for the person choosing it that names the rule it
            breaks (never the password itself).
        """
        refusal = check_password(password, min_length=self._settings.min_length, personal=personal)
        return None if refusal is None else refusal.message

    async def check_new(self, password: str, *, personal: Sequence[str] = ()) -> str | None:
        """:meth:`check_policy` in a worker thread, so loading the lists never stalls the event loop."""
        return await asyncio.to_thread(self.check_policy, password, personal=tuple(personal))

    async def _check(self, stored: str, normalised: str) -> bool:
        async with self._slots:
            return await self._in_thread(self._verify_sync, stored, normalised)

    async def _in_thread(self, func: Callable[..., _T], *args: str) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, func, *args)

    def _verify_sync(self, stored: str, normalised: str) -> bool:
        try:
            return self._argon.verify(stored, normalised)
        except VerifyMismatchError:
            return False
        except InvalidHashError:
            # A corrupt or foreign hash cannot match anything; say so in the log (never the hash).
            logger.warning("stored password hash is not a valid argon2 hash; refusing the password")
            return False
        except VerificationError:
            return False

    async def _dummy_check(self, normalised: str) -> None:
        # The dummy hash is made lazily, so building a hasher stays cheap. The call that makes it does
        # not verify as well: one argon2 computation either way, so even the first unknown-user
        # sign-in takes as long as a wrong password. Two first callers racing both make one: harmless.
        if self._dummy is None:
            async with self._slots:
                self._dummy = await self._in_thread(self._argon.hash, _DUMMY_PASSWORD)
            return
        await self._check(self._dummy, normalised)


def _normalise(password: str) -> str:
    return unicodedata.normalize("NFKC", password)
