"""One logged-in PKCS#11 session per token per process, opened lazily, healed after outages.

Why shared and not one session per provider: in PKCS#11 the login state belongs to
the *application* (the process), not to a session.  A second ``C_Login`` fails with
CKR_USER_ALREADY_LOGGED_IN and ``C_Logout`` on any session logs out all of them, so
two providers in one process (one per environment, or a rebuilt service) each with
its own logged-in session would break each other.  A ``Token`` is therefore shared
by every provider that names the same library and slot/label, and its one session
is used under a lock (a PKCS#11 session must not run two operations at once).

``C_Initialize``/``C_Finalize`` are process-wide too: after a device error the
library is finalized and initialized again (SoftHSM, like network HSM clients,
does not recover a lost token otherwise), which invalidates every session of that
library; a generation counter tells the other tokens to reopen theirs.

Everything here blocks and runs in worker threads; ``HsmProvider`` adds the
``asyncio.to_thread`` and the timeout.  No message ever contains the PIN.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pkcs11
from pkcs11 import exceptions as p11

from qkms.errors import ProviderUnavailableError

T = TypeVar("T")

# Our session (not the device) went stale: reopen once and retry transparently.
_STALE = (p11.SessionHandleInvalid, p11.SessionClosed, p11.UserNotLoggedIn)


@dataclass
class _Library:
    """A loaded module and how many times it was re-initialized."""

    path: str
    generation: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    lib: Any = None

    def load(self) -> Any:
        """The module, initialized; a finalize by anyone (a reset, another user of the
        module in this process) invalidated every session, so it starts a generation."""
        with self.lock:
            if self.lib is not None and not self.lib.initialized:
                self.generation += 1
            self.lib = pkcs11.lib(self.path)  # initializes again if it was finalized
            return self.lib

    def reset(self, seen: int) -> None:
        """Finalize once per outage, however many tokens notice it."""
        with self.lock:
            if self.generation != seen:
                return
            self.generation += 1
            if self.lib is not None and self.lib.initialized:
                try:
                    self.lib.finalize()
                except Exception:  # noqa: S110 - a dead module may refuse; load retries
                    pass


_LIBRARIES: dict[str, _Library] = {}
_TOKENS: dict[tuple[str, str], Token] = {}
_REGISTRY = threading.Lock()


class Token:
    """A token (slot ID or label) of a PKCS#11 module, with its shared session."""

    def __init__(self, library: str, slot: int | None, label: str | None, pin: str,
                 lock_timeout: float) -> None:
        with _REGISTRY:
            self._library = _LIBRARIES.setdefault(library, _Library(library))
        self.slot, self.label = slot, label
        self._pin = pin
        self.lock_timeout = lock_timeout
        self._lock = threading.Lock()
        self._session: Any = None
        self._generation = -1
        self.objects: dict[tuple[str, int], Any] = {}  # (label, class) -> object, per session

    @classmethod
    def shared(cls, library: str, slot: int | None, label: str | None, pin: str,
               lock_timeout: float = 10.0) -> Token:
        key = (library, f"slot={slot}" if slot is not None else f"label={label}")
        with _REGISTRY:
            token = _TOKENS.get(key)
        if token is None:
            token = cls(library, slot, label, pin, lock_timeout)
            with _REGISTRY:
                token = _TOKENS.setdefault(key, token)
        token._pin = pin  # the newest configuration wins at the next login
        return token

    @property
    def where(self) -> str:
        """How errors and health name the device: library and slot, never the PIN."""
        slot = self.slot if self.slot is not None else f"label {self.label!r}"
        return f"{self._library.path} slot {slot}"

    def __repr__(self) -> str:
        return f"<Token {self.where}>"

    def unavailable(self, reason: str) -> ProviderUnavailableError:
        return ProviderUnavailableError(f"HSM at {self.where}: {reason}")

    # -- the session ---------------------------------------------------------------
    def _open(self) -> Any:
        lib = self._library.load()
        if self._session is not None and self._generation == self._library.generation:
            return self._session
        self._session, self.objects = None, {}
        generation = self._library.generation
        if self.slot is not None:
            slots = [s for s in lib.get_slots(token_present=True) if s.slot_id == self.slot]
            if not slots:
                raise p11.NoSuchToken(f"no token in slot {self.slot}")
            token = slots[0].get_token()
        else:
            token = lib.get_token(token_label=self.label)
        try:
            session = token.open(rw=True, user_pin=self._pin)
        except p11.UserAlreadyLoggedIn:
            # Another session of this process logged in (login is per application).
            session = token.open(rw=True)
        self._session, self._generation = session, generation
        return session

    def _drop(self, *, device: bool) -> None:
        """Forget the session; after a device error, re-initialize the module too."""
        self._session, self.objects = None, {}
        if device:
            self._library.reset(self._generation)

    def call(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(session)`` under the token lock (blocking: call from a worker thread).

        ``fn`` translates the errors that mean something for one key (missing object,
        failed authentication of a ciphertext); any other PKCS#11 error means the
        device or our session is gone, and becomes ``ProviderUnavailableError``.
        """
        if not self._lock.acquire(timeout=self.lock_timeout):
            raise self.unavailable(f"busy: no session free within {self.lock_timeout:g}s")
        try:
            for attempt in (1, 2):
                try:
                    return fn(self._open())
                except _STALE as exc:
                    self._drop(device=False)
                    if attempt == 2:
                        raise self.unavailable(_reason(exc)) from None
                except (p11.PKCS11Error, OSError) as exc:
                    self._drop(device=True)
                    raise self.unavailable(_reason(exc)) from None
            raise AssertionError("unreachable")
        finally:
            self._lock.release()

    def info(self) -> dict[str, Any]:
        """Token facts for health (blocking)."""
        def read(session: Any) -> dict[str, Any]:
            token = session.token
            return {"library": self._library.path, "slot": token.slot.slot_id,
                    "token": token.label, "manufacturer": token.manufacturer_id,
                    "model": token.model}
        return self.call(read)


def _reason(exc: BaseException) -> str:
    """A short reason: the PKCS#11 error name and, for load failures, the OS message."""
    name = type(exc).__name__
    detail = str(exc).strip()
    if isinstance(exc, p11.PinIncorrect | p11.PinLenRange | p11.PinInvalid):
        return f"login failed ({name}); check HSM_PIN"
    if isinstance(exc, p11.NoSuchToken):
        return f"token not found ({detail or name})"
    if detail and "loading" in detail:
        return f"cannot load the PKCS#11 library ({detail.split(':', 1)[-1].strip()})"
    return f"{name}{': ' + detail if detail else ''}"
