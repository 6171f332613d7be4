"""Many learners on one machine: a bounded pool of training sessions, a fair share of the hardware, one run each.

Each learner gets their own session (a `Session` or a `TwinSession`), found by a key the web server gives it,
freed when they leave or after an idle limit; at most `max_sessions` live at once. Training takes one of the
hardware's `workers` slots for a turn of steps, first come first served, and a single Step goes ahead of Play's
turns, so a click waits behind at most the turns already running. `train()` is the one Play / Step xN loop: a
learner has at most one run at a time, and Pause, a second Play, Reset or closing the tab ends it; its reports
(chart updates) share a budget per second across the room. `for_device` says how a CPU and a GPU are shared.
"""

import ctypes
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from . import graphstep
from .errors import UserError
from .session import merge_reports

CLICK, PLAY = 0, 1  # turn priorities: a learner's single action goes before Play's next turn


class PoolFull(UserError):
    """No room for another session; the message is meant for the user."""


class FairSlots:
    """`n` hardware slots, handed over first come first served within a priority. A released slot goes straight to
    the longest waiter, so a Play loop that releases and asks again cannot barge back in ahead of others (a
    threading.Semaphore lets it, and one learner's Play could then starve the room)."""

    def __init__(self, n: int):
        self._free = n
        self._waiting: list[deque] = [deque(), deque()]  # per priority: events of the threads waiting
        self._lock = threading.Lock()

    def acquire(self, priority: int = PLAY) -> None:
        with self._lock:
            if self._free and not any(self._waiting):
                self._free -= 1
                return
            turn = threading.Event()
            self._waiting[priority].append(turn)
        turn.wait()

    def release(self) -> None:
        with self._lock:
            for queue in self._waiting:
                if queue:
                    queue.popleft().set()  # the slot passes to that waiter without ever being free
                    return
            self._free += 1

    def waiting(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._waiting)


class SessionPool:
    def __init__(
        self,
        make: Callable,
        max_sessions: int = 32,
        idle_seconds: float = 1800,
        workers: int = 1,
        turn_seconds: float = 0.35,
        report_seconds: float = 0.35,
        untrained_seconds: float = 300,
        turn_steps: int = 1,
        updates_per_second: float | None = None,
    ):
        self.make = make  # builds a fresh session for a new learner
        self.max_sessions = max_sessions  # live sessions at most; the next learner is told to wait
        self.idle_seconds = idle_seconds  # a session untouched this long is freed
        self.untrained_seconds = untrained_seconds  # ... or this long, if it never took a step (a seat, not a run)
        self.turn_seconds = turn_seconds  # training a run does per hold of a slot (a CPU's turn)
        self.turn_steps = turn_steps  # ... but at least this many steps (a GPU's turn: steps launched, read once)
        self.report_seconds = report_seconds  # training between a run's reports (chart updates, Pause checks)
        # all runs' reports together at most this many a second (None: no limit): with many learners on Play, each
        # one's charts move less often, and the web server's one Python thread still answers clicks
        self.updates_per_second = updates_per_second
        self._sessions: dict[str, object | None] = {}  # None: the seat is reserved while its session is built
        self._used: dict[str, float] = {}  # key -> its last use (time.monotonic()): a look counts, as a click
        self._leaving: dict[str, float] = {}  # key -> when its seat is freed: its last page closed (a reload's grace)
        self._busy: dict[str, int] = {}  # sessions waiting for or holding a training slot: never idle
        self._runs: dict[str, Run] = {}  # key -> its one running Play / Step xN
        self._stopped_at: dict[str, float] = {}  # key -> its last Pause (time.monotonic()): for a run still starting
        self._lock = threading.Lock()
        self.workers = workers  # learners training at once
        self._slots = FairSlots(workers)

    # --- seats -----------------------------------------------------------------------------------------------
    def get(self, key: str, make: Callable | None = None):
        """This learner's session, created on first use (by `make`, else the pool's own factory)."""
        with self._lock:
            freed = self._sweep()
            if key not in self._sessions:
                if len(self._sessions) >= self.max_sessions:
                    raise PoolFull(
                        f"All {self.max_sessions} seats are taken. Please try again in a few minutes.",
                        zh=f"全部 {self.max_sessions} 个席位都已有人。请过几分钟再试。",
                    )
                self._sessions[key] = None  # reserve the seat; build outside the lock (it takes a moment)
            session = self._sessions[key]
            self._seen(key)
        if freed:
            release_memory()  # outside the lock: nobody waits on the trim
        if session is None:
            try:
                session = (make or self.make)()
            except Exception:
                with self._lock:
                    if key in self._sessions and self._sessions[key] is None:
                        del self._sessions[key]
                        self._used.pop(key, None)
                raise
            with self._lock:
                if key not in self._sessions:  # closed (or swept) while it was being built: the learner left
                    return session  # theirs for this one request; it holds no seat
                if self._sessions[key] is None:
                    self._sessions[key] = session
                session = self._sessions[key]
        return session

    def peek(self, key: str):
        """This learner's session if they have one, else None: looking takes no seat, but keeps one (a learner who
        only predicts is using their network) (and sweeps, as any visit)."""
        with self._lock:
            freed, session = self._sweep(), self._sessions.get(key)
            if key in self._sessions:
                self._seen(key)
        if freed:
            release_memory()
        return session

    def _seen(self, key: str) -> None:
        """The learner is here (the caller holds the lock): their seat is in use, and not leaving."""
        self._used[key] = time.monotonic()
        self._leaving.pop(key, None)

    def leave(self, key: str, grace_seconds: float, page: str | None = None, last: bool = True) -> None:
        """A page of the learner's is gone (closed, or being reloaded): the run it started ends (any run, if it was
        their `last` page); and if it was, their seat is freed unless they are back within `grace_seconds` (a reload
        finds its run again). Another tab of theirs keeps its run and their seat."""
        with self._lock:
            run = self._runs.get(key)
            if run is not None and (last or run.page == page):
                del self._runs[key]  # ended silently: its page is gone
            if last and key in self._sessions:
                self._leaving[key] = time.monotonic() + grace_seconds

    def replace(self, key: str, session) -> None:
        """Give the learner a new session (Reset, a loaded model, their own data); their running run ends first."""
        old = self._end_run(key)
        with self._lock:
            self._sessions[key] = session
            self._seen(key)
        _wait_for_chunk(old)

    def close(self, *keys: str) -> None:
        """The learner left: end their runs and free their seats now."""
        for key in keys:
            self._end_run(key)
        with self._lock:
            gone = [self._sessions.pop(key, None) for key in keys]
            for key in keys:
                self._used.pop(key, None)
                self._leaving.pop(key, None)
                self._stopped_at.pop(key, None)
        if any(s is not None for s in gone):
            release_memory()

    def __len__(self) -> int:
        with self._lock:
            return sum(s is not None for s in self._sessions.values())

    def _sweep(self) -> bool:
        """Free the sessions left idle (the caller holds the lock); True if any was."""
        now = time.monotonic()

        def limit(key) -> float:
            trained = getattr(self._sessions.get(key), "step_count", 1)  # a reserved seat (None) counts as in use
            return self.idle_seconds if trained else min(self.idle_seconds, self.untrained_seconds)

        def gone(key) -> bool:
            return now - self._used[key] > limit(key) or now > self._leaving.get(key, math.inf)

        idle = [k for k in self._used if gone(k) and not self._busy.get(k) and k not in self._runs]
        for key in idle:
            self._sessions.pop(key, None)
            self._used.pop(key, None)
            self._leaving.pop(key, None)
            self._stopped_at.pop(key, None)
        return bool(idle)

    # --- the hardware ----------------------------------------------------------------------------------------
    @contextmanager
    def compute(self, key: str | None = None, priority: int = CLICK):
        """Hold one of the hardware's training slots. With `key`, that learner's session counts as in use while
        it waits and trains (a long queue must not make it look idle) and after."""
        if key is not None:
            with self._lock:
                self._busy[key] = self._busy.get(key, 0) + 1
        try:
            self._slots.acquire(priority)
            try:
                yield
            finally:
                self._slots.release()
        finally:
            if key is not None:
                with self._lock:
                    self._busy[key] -= 1
                    if not self._busy[key]:
                        del self._busy[key]
                    if key in self._used:
                        self._used[key] = time.monotonic()

    @contextmanager
    def click(self, key: str, make: Callable | None = None):
        """A single action's turn (Step, Teach, ...): a training slot ahead of Play's turns, then the learner's
        session as it is once the slot is theirs, under its lock. A Reset or Load made while the click waited has
        replaced the network it found on arrival: the click acts on the new one, never on a network thrown away."""
        self.get(key, make)  # a full room says so now, not after the wait
        with self.compute(key):
            while True:
                session = self.get(key, make)
                with session.lock:
                    with self._lock:
                        replaced = key in self._sessions and self._sessions[key] is not session
                    if not replaced:  # (replaced between the two lines above: look again)
                        yield session
                        return

    # --- runs: Play and Step xN ------------------------------------------------------------------------------
    def train(
        self,
        key: str,
        steps: int | None = None,
        seconds: float = 600,
        make: Callable | None = None,
        step: Callable | None = None,
        page: str | None = None,
    ) -> Iterator[tuple[object, dict]]:
        """Train the learner's session `steps` steps (None: until `stop`, or `seconds` have passed), yielding
        (session, report) every `report_seconds` and at the end. A report is `session.step`'s for the steps since
        the last one, plus "total" (steps taken in this run) and "end": None, "done", or "timeout". A new run of
        the same learner, `stop`, `replace` and `close` end this one before its next turn, and it never reports
        after that: the charts of a new session are not overwritten by an old run's steps. A run `stop` ended says
        so last, on its own stream: a report with "end" "stopped" (its unreported steps, if any). Its stream is
        the page's last word on the run: an update of its sent before Pause's answer can reach the page after
        it (seen in chromium, a chart a point behind the status). A run a newer run of the same session replaced
        (another tab's Play) ends with "replaced", so its page knows why it stopped. `step(session, n)`:
        how a turn trains (default `session.step(n)`); a report with "finished" true ends the run (a guided
        experiment that has run its course). `page`: the page that asked (`leave`)."""
        began, token = time.monotonic(), Run(page)
        session = self.get(key, make)  # a first training action makes the session: ~0.1 s, Pause may come meanwhile
        _wait_for_chunk(self._end_run(key, "replaced"))  # one run per learner: a second Play replaces the first
        with self._lock:
            if self._stopped_at.get(key, -math.inf) >= began:  # a Pause after this Play, before it was running
                token.ended = "stopped"
            else:
                self._runs[key] = token
        start, turn, total, pending, last_report = time.monotonic(), self.turn_steps, 0, None, time.monotonic()
        try:
            while True:
                if steps is not None:
                    turn = min(turn, steps - total)
                with self.compute(key, PLAY), session.lock:
                    if not self._current(key, token, session):
                        break
                    t = time.perf_counter()
                    report = step(session, turn) if step else session.step(turn)
                    elapsed = time.perf_counter() - t
                total += _steps_of(report)
                pending = report if pending is None else _merge(pending, report)
                turn = max(self.turn_steps, min(200, int(turn * self.turn_seconds / max(elapsed, 1e-4))))
                end = "done" if (steps is not None and total >= steps) or report.get("finished") else None
                if end is None and steps is None and time.monotonic() - start >= seconds:
                    end = "timeout"
                if end or time.monotonic() - last_report >= self._report_interval():
                    if not self._current(key, token, session):
                        break
                    yield session, {**pending, "total": total, "end": end}
                    pending, last_report = None, time.monotonic()
                if end:
                    return
            # not current any more: ended by Pause, or by a newer run on the same network (another tab's Play),
            # which this run's page would not see otherwise; by Reset or a leave: nothing to say
            with self._lock:
                same = self._sessions.get(key) is session
            if token.ended and same:
                yield session, {**(pending or {}), "total": total, "end": token.ended}
        finally:
            with self._lock:
                if self._runs.get(key) is token:
                    del self._runs[key]

    def _report_interval(self) -> float:
        if self.updates_per_second is None:
            return self.report_seconds
        return max(self.report_seconds, self.running() / self.updates_per_second)

    def stop(self, key: str) -> None:
        """Pause: end the learner's run; returns once its turn in flight, if any, has finished. The run then
        reports "stopped" (`train`)."""
        with self._lock:
            if key in self._sessions:  # (a seat being made counts: a first Play makes it)
                self._stopped_at[key] = time.monotonic()
        _wait_for_chunk(self._end_run(key, "stopped"))

    def running(self, key: str | None = None) -> int:
        """Runs (Play, Step xN) in progress on the server, or of one learner (0 or 1)."""
        with self._lock:
            return len(self._runs) if key is None else int(key in self._runs)

    def _end_run(self, key: str, why: str | None = None):
        """Take the learner's run token away, saying `why` to the run ("stopped", "replaced"; None: nothing to
        say); returns their session, whose lock a turn in flight holds."""
        with self._lock:
            run = self._runs.pop(key, None)
            if run is not None:
                run.ended = why
            return self._sessions.get(key)

    def _current(self, key: str, token, session) -> bool:
        with self._lock:
            return self._runs.get(key) is token and self._sessions.get(key) is session


# A GPU's turn: steps launched back to back and read once at the end (session.Session.step), so the host prepares
# the next while the card computes. A batch-64 step is ~1 ms of GPU work: a Step click waits a few ms behind a turn.
GPU_TURN_STEPS = 8
# Chart updates a second for the whole room: each costs the web server ~10 ms of its one Python thread (gradio's
# share and ours; a 2-vCPU Xeon, training stubbed), so 40 take ~40% of it and clicks keep the rest. Alone, a learner's
# Play updates every report_seconds; with 32 playing, every 0.8 s; with 100, every 2.5 s.
ROOM_UPDATES_PER_SECOND = 40


def for_device(device, make: Callable, max_sessions: int, idle_seconds: float, **changes) -> SessionPool:
    """The app's scheduler for `device` (`changes`: other SessionPool settings, for a bench). A CPU step (~0.1-1 s)
    already uses every core: one learner at a time, in turns of a chart update's worth of steps. A GPU step is ~1 ms
    of host work: four learners launch at once, in turns of GPU_TURN_STEPS, so a Step click waits behind a few
    steps, not a third of a second of someone's Play."""
    if device.type == "cuda":
        settings = {"workers": 4, "turn_seconds": 0.0, "turn_steps": GPU_TURN_STEPS}
    else:
        settings = {"workers": 1, "turn_seconds": 0.35}
    settings["updates_per_second"] = ROOM_UPDATES_PER_SECOND
    return SessionPool(make, max_sessions, idle_seconds, **{**settings, **changes})


class Run:
    """A Play's or Step xN's token: current while the pool holds it; once taken away, why (`train`'s last report).
    `page`: the page that started it (a closed page ends its own run, not another tab's)."""

    __slots__ = ("ended", "page")

    def __init__(self, page: str | None = None):
        self.ended: str | None = None
        self.page = page


def _wait_for_chunk(session) -> None:
    if session is not None:
        with session.lock:  # a turn holds the session's lock: once we have it, that turn is over
            pass


def _steps_of(report: dict) -> int:
    """Steps a report covers, for a Session's report or a TwinSession's {"residual": ..., "plain": ...}."""
    r = report.get("residual", report)
    return r["done"] + r["rejected"]


def _merge(a: dict, b: dict) -> dict:
    """Two consecutive step reports -> one, in the same shape (a TwinSession's: per twin)."""
    if "residual" in a:
        return {name: merge_reports([a[name], b[name]], b[name]["step"]) for name in a}
    return merge_reports([a, b], b["step"])


def release_memory() -> None:
    """Hand freed sessions' memory back to the OS: glibc keeps freed heap pages of many threads' arenas otherwise,
    and a workshop server would look like it leaks. No gc.collect(): a session is freed by reference counting the
    moment the pool drops it, and a full collection of the server's ~500k objects holds the GIL for ~250 ms,
    stalling every learner's requests each time one leaves."""
    graphstep.free_retired()  # the departed learners' CUDA graphs (kept until no capture can be under way)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass
