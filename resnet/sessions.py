"""Many learners on one machine: a bounded pool of training sessions and a fair share of the hardware.

Each browser tab gets its own `Session` (model, optimizer, history), found by a key the web server gives it.
Sessions are freed when their tab closes or after an idle limit, and at most `max_sessions` live at once. Training
takes a slot from `workers` (1 on a CPU, whose cores one step already uses; a few on a GPU) one chunk of steps at a
time, so thirty learners pressing Play take turns instead of slowing each other, and nothing else waits on it.
"""

import ctypes
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

from .engine import Session


class PoolFull(RuntimeError):
    """No room for another session; the message is meant for the user."""


class SessionPool:
    def __init__(
        self, make: Callable[[], Session], max_sessions: int = 32, idle_seconds: float = 1800, workers: int = 1
    ):
        self.make = make  # builds a fresh Session for a new learner
        self.max_sessions = max_sessions  # live sessions at most; the next learner is told to wait
        self.idle_seconds = idle_seconds  # a session untouched this long is freed
        self._sessions: dict[str, Session] = {}
        self._used: dict[str, float] = {}
        self._busy: dict[str, int] = {}  # sessions waiting for or holding a training slot: never idle
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(workers)

    def get(self, key: str, make: Callable[[], Session] | None = None) -> Session:
        """This learner's session, created on first use (by `make`, else the pool's own factory)."""
        with self._lock:
            freed = self._sweep()
            if key not in self._sessions:
                if len(self._sessions) >= self.max_sessions:
                    raise PoolFull(f"All {self.max_sessions} seats are taken. Please try again in a few minutes.")
                self._sessions[key] = None  # reserve the seat; build outside the lock (it takes a moment)
            session = self._sessions[key]
            self._used[key] = time.monotonic()
        if freed:
            release_memory()  # outside the lock: nobody waits on the trim
        if session is None:
            try:
                session = (make or self.make)()
            except Exception:
                with self._lock:
                    self._sessions.pop(key, None)
                raise
            with self._lock:
                if self._sessions.get(key) is None:
                    self._sessions[key] = session
                session = self._sessions[key]
        return session

    def replace(self, key: str, session: Session) -> None:
        with self._lock:
            self._sessions[key] = session
            self._used[key] = time.monotonic()

    def close(self, *keys: str) -> None:
        with self._lock:
            gone = [self._sessions.pop(key, None) for key in keys]
            for key in keys:
                self._used.pop(key, None)
        if any(s is not None for s in gone):
            release_memory()

    def __len__(self) -> int:
        with self._lock:
            return sum(s is not None for s in self._sessions.values())

    def _sweep(self) -> bool:
        """Free the sessions left idle (the caller holds the lock); True if any was."""
        now = time.monotonic()
        idle = [k for k, t in self._used.items() if now - t > self.idle_seconds and not self._busy.get(k)]
        for key in idle:
            self._sessions.pop(key, None)
            self._used.pop(key, None)
        return bool(idle)

    @contextmanager
    def compute(self, key: str | None = None):
        """Hold one of the hardware's training slots for a chunk of steps. With `key`, that learner's session
        counts as in use while it waits and trains (a long queue must not make it look idle) and after."""
        if key is not None:
            with self._lock:
                self._busy[key] = self._busy.get(key, 0) + 1
        try:
            with self._slots:
                yield
        finally:
            if key is not None:
                with self._lock:
                    self._busy[key] -= 1
                    if not self._busy[key]:
                        del self._busy[key]
                    if key in self._used:
                        self._used[key] = time.monotonic()


def release_memory() -> None:
    """Hand freed sessions' memory back to the OS: glibc keeps freed heap pages of many threads' arenas otherwise,
    and a workshop server would look like it leaks. No gc.collect(): a session is freed by reference counting the
    moment the pool drops it, and a full collection of the server's ~500k objects holds the GIL for ~250 ms,
    stalling every learner's requests each time one leaves."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass
