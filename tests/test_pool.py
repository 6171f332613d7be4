"""The session pool: seats, idle sessions freed, busy ones kept, learners never handed each other's session."""

import threading
import time

import pytest
import torch

from resnet.pool import GPU_TURN_STEPS, PoolFull, SessionPool, for_device


class Fake:
    """Stands in for a Session: the pool only stores and hands out what its factory makes."""


def test_each_key_gets_its_own_session_and_the_same_one_again():
    pool = SessionPool(Fake, max_sessions=4)
    a, b = pool.get("a"), pool.get("b")
    assert a is not b and pool.get("a") is a and len(pool) == 2


def test_a_full_pool_says_so_and_a_closed_seat_frees_one():
    pool = SessionPool(Fake, max_sessions=1)
    pool.get("a")
    with pytest.raises(PoolFull, match="seats are taken"):
        pool.get("b")
    pool.close("a")
    assert pool.get("b") is not None


def test_idle_sessions_are_freed_but_not_while_they_wait_for_or_hold_the_hardware():
    pool = SessionPool(Fake, max_sessions=4, idle_seconds=0.05)
    busy, idle = pool.get("busy"), pool.get("idle")
    with pool.compute("busy"):
        time.sleep(0.1)
        pool.get("other")  # any visit sweeps
        assert pool.get("busy") is busy  # kept: it was training
    assert pool.get("idle") is not idle  # freed: a new one was made


def test_a_failing_factory_does_not_keep_the_seat():
    def broken():
        raise ValueError("unknown dataset")

    pool = SessionPool(broken, max_sessions=1)
    with pytest.raises(ValueError):
        pool.get("a")
    assert len(pool) == 0
    assert pool.get("a", make=Fake) is not None


def test_a_real_session_is_gone_as_soon_as_the_pool_drops_it_without_a_garbage_collection():
    # the pool frees memory with malloc_trim only, not gc.collect() (a 250 ms GIL stall on a loaded server): that is
    # right only while a Session holds no reference cycle
    import gc
    import weakref

    from resnet.session import Session, TrainConfig

    Session(TrainConfig(batch_size=4, eval_every=0)).step(1)  # torch's one-time imports on a first optimizer
    pool = SessionPool(lambda: Session(TrainConfig(batch_size=4, eval_every=0)), max_sessions=2, idle_seconds=0.05)
    session = pool.get("leaver")
    session.step(1)
    gone = weakref.ref(session.model)
    del session
    gc.disable()
    try:
        time.sleep(0.1)
        pool.get("someone else")  # sweeps the idle one
        assert gone() is None
    finally:
        gc.enable()


# --- seats while a session is being built -------------------------------------------------------------------------
def test_a_learner_who_leaves_while_their_session_is_built_leaves_no_seat_behind():
    building, release = threading.Event(), threading.Event()

    def slow():
        building.set()
        release.wait(5)
        return Fake()

    pool = SessionPool(slow, max_sessions=1)
    got = []
    t = threading.Thread(target=lambda: got.append(pool.get("leaver")))
    t.start()
    building.wait(5)
    pool.close("leaver")  # the tab closed while its session was being built
    release.set()
    t.join(5)
    assert got and len(pool) == 0
    assert pool.get("next", make=Fake) is not None  # the one seat is free again, not held by a ghost


# --- runs: Play, Step xN, Pause, and what ends them ---------------------------------------------------------------
class Stepper:
    """A session that takes `seconds` per step: the pool calls only `lock` and `step(n)`."""

    def __init__(self, seconds=0.002):
        self.lock = threading.RLock()
        self.seconds, self.step_count = seconds, 0

    def step(self, n=1):
        with self.lock:
            time.sleep(self.seconds * n)
            self.step_count += n
            return {"step": self.step_count, "done": n, "rejected": 0, "messages": [], "last": None}


def fast_pool(**kw) -> SessionPool:
    return SessionPool(Stepper, max_sessions=8, turn_seconds=0.0, report_seconds=0.01, **kw)


def test_step_n_takes_exactly_n_steps_and_reports_the_end():
    pool = fast_pool()
    reports = [r for _, r in pool.train("a", steps=25)]
    assert reports[-1]["total"] == 25 and reports[-1]["end"] == "done" and pool.get("a").step_count == 25
    assert sum(r["done"] for r in reports) == 25 and pool.running() == 0


def test_reset_during_play_ends_the_old_run_and_it_never_reports_again():
    pool = fast_pool()
    old_reports, new = [], Stepper()
    run = pool.train("a")
    old_session, first = next(run)
    pool.replace("a", new)  # Reset (or Load model, or Train on my zip) while playing
    old_reports = list(run)
    steps_then = old_session.step_count
    time.sleep(0.05)
    assert old_reports == [] and old_session.step_count == steps_then  # the orphan stopped at once
    assert new.step_count == 0 and pool.running() == 0


def test_a_second_play_replaces_the_first_and_pause_stops_step_n():
    pool = fast_pool()
    first = pool.train("a")
    next(first)
    second = pool.train("a", steps=10_000)
    next(second)
    (last,) = [r for _, r in first]  # the first run's page is told why it stopped (another tab's Play, say)
    assert last["end"] == "replaced" and pool.running() == 1
    pool.stop("a")  # Pause stops Step xN too, and the run says so last, on its own stream
    (last,) = [r for _, r in second]
    assert last["end"] == "stopped" and pool.running() == 0


def test_a_run_replaced_by_one_already_over_still_says_it_was_replaced():
    """The newer run (Step x2 from another tab) can be over before the old Play looks again: it must still say
    why it stopped (a busy server ran it so in the app's tests)."""
    pool = fast_pool()
    first = pool.train("a")
    next(first)
    assert [r["end"] for _, r in pool.train("a", steps=2)] == ["done"]
    assert [r["end"] for _, r in first] == ["replaced"] and pool.running() == 0


def test_a_play_another_tab_replaces_says_so_when_both_run_on_threads():
    """As the app runs them (a thread each): the old Play looks again while the new run waits for its turn; a
    browser found it silent when it judged by the pool's runs at that moment rather than by its own token."""
    pool = SessionPool(lambda: Stepper(0.02), max_sessions=4, turn_seconds=0.05, report_seconds=0.05)
    ends: list = []
    first = threading.Thread(target=lambda: ends.extend(r["end"] for _, r in pool.train("a")))
    first.start()
    time.sleep(0.3)
    list(pool.train("a", steps=3))  # the other tab's Step x3
    first.join(5)
    assert ends and ends[-1] == "replaced", ends


def test_pause_has_the_run_say_it_stopped_with_every_step_it_took():
    """The page's last word on a paused run comes on the run's own stream (an update it sent before Pause could
    reach the page after Pause's answer): a "stopped" report whose total is every step the session took."""
    pool = SessionPool(lambda: Stepper(0.002), max_sessions=4, turn_seconds=0.0, report_seconds=10)
    run = pool.train("a")
    stopper = threading.Timer(0.05, pool.stop, ["a"])
    stopper.start()
    reports = [r for _, r in run]  # nothing before the end: a report every 10 s
    stopper.join()
    session = pool.get("a")
    assert [r["end"] for r in reports] == ["stopped"] and session.step_count > 0
    assert reports[0]["total"] == reports[0]["done"] == session.step_count, reports[0]
    time.sleep(0.02)
    assert pool.get("a").step_count == session.step_count and pool.running() == 0


def test_a_pause_while_a_first_play_is_still_making_the_session_stops_that_play():
    """Pause no longer cancels the Play event: a Pause that lands while the Play is starting (its learner's first
    training action builds the session) must still end it, not leave it training for its whole time."""
    pool = SessionPool(lambda: (time.sleep(0.3), Stepper())[1], max_sessions=4, turn_seconds=0.0, report_seconds=10)
    reports = []
    play = threading.Thread(target=lambda: reports.extend(r for _, r in pool.train("a", seconds=30)))
    play.start()
    time.sleep(0.1)  # the Play is making the session
    pool.stop("a")
    play.join(5)
    assert not play.is_alive(), "the Play went on after a Pause that came while it started"
    assert [r["end"] for r in reports] == ["stopped"] and pool.get("a").step_count == 0
    next(pool.train("a", steps=1))  # and a Play after that Pause trains as ever
    assert pool.get("a").step_count == 1


def test_closing_the_tab_ends_its_run():
    pool = fast_pool()
    run = pool.train("a")
    next(run)
    pool.close("a")
    assert list(run) == [] and pool.running() == 0 and len(pool) == 0


def test_play_stops_by_itself_after_its_time_and_says_so():
    pool = fast_pool()
    reports = [r for _, r in pool.train("a", seconds=0.05)]
    assert reports[-1]["end"] == "timeout" and pool.running() == 0


def test_a_playing_session_is_not_swept_as_idle():
    pool = SessionPool(lambda: Stepper(0.01), max_sessions=4, idle_seconds=0.02, turn_seconds=0.0, report_seconds=0.5)
    run = pool.train("player")
    session, _ = next(run)
    time.sleep(0.05)
    pool.get("someone else")  # a visit sweeps the idle
    assert pool.get("player") is session
    pool.stop("player")


def test_a_step_click_waits_behind_at_most_one_turn_of_the_players():
    """One slot, three learners on Play one step per turn: a Step click is served next, not after the queue."""
    pool = SessionPool(lambda: Stepper(0.01), max_sessions=8, workers=1, turn_seconds=0.0, report_seconds=10)
    turns: list[str] = []
    players = [pool.get(k) for k in "abc"]
    for s, k in zip(players, "abc"):
        step = s.step
        s.step = lambda n, step=step, k=k: (turns.append(k), step(n))[1]
    threads = [threading.Thread(target=lambda k=k: list(pool.train(k, steps=40))) for k in "abc"]
    for t in threads:
        t.start()
    time.sleep(0.1)  # the three are taking turns
    asked = len(turns)
    with pool.compute("clicker"):  # a Step (CLICK priority, the default)
        served = len(turns)
    for k in "abc":
        pool.stop(k)
    for t in threads:
        t.join(5)
    assert served - asked <= 1, f"the click waited {served - asked} player turns"
    # and Play shares the slot fairly: in any window of three turns, each player had one
    window = turns[3:30]
    assert all(len(set(window[i : i + 3])) == 3 for i in range(0, len(window) - 3, 3)), window


def test_a_gpu_pool_launches_turns_of_several_steps_and_a_cpu_pool_turns_by_time():
    gpu = for_device(torch.device("cuda"), lambda: Stepper(0.0005), max_sessions=4, idle_seconds=60)
    cpu = for_device(torch.device("cpu"), Stepper, max_sessions=4, idle_seconds=60)
    assert (gpu.workers, gpu.turn_steps, cpu.workers, cpu.turn_seconds) == (4, GPU_TURN_STEPS, 1, 0.35)
    session = gpu.get("a")
    asked = []
    step = session.step
    session.step = lambda n: (asked.append(n), step(n))[1]
    reports = list(gpu.train("a", steps=GPU_TURN_STEPS * 2 + 3))  # Step x19 on a GPU
    assert asked == [GPU_TURN_STEPS, GPU_TURN_STEPS, 3] and reports[-1][1]["total"] == GPU_TURN_STEPS * 2 + 3


def test_a_busy_room_shares_a_budget_of_chart_updates():
    # each update costs the web server's one Python thread: four players at once get a quarter of the budget each
    pool = SessionPool(Stepper, 8, workers=4, turn_seconds=0.0, report_seconds=0.01, updates_per_second=20)
    counts = {k: 0 for k in "abcd"}

    def play(k):
        for _ in pool.train(k, seconds=1.0):
            counts[k] += 1

    threads = [threading.Thread(target=play, args=(k,)) for k in counts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    # 20 a second in all (a run's first report may come before the others have started): ~5 each, not ~100
    assert sum(counts.values()) <= 20 + 2 * len(counts), counts
    assert min(counts.values()) >= 3, counts  # and nobody is left without any


def test_looking_takes_no_seat_and_a_learner_who_leaves_is_freed_after_the_grace_unless_back():
    pool = SessionPool(Fake, max_sessions=2, idle_seconds=60)
    assert pool.peek("visitor") is None and len(pool) == 0
    kept = pool.get("reloads")
    pool.get("leaves")
    pool.leave("reloads", grace_seconds=0.05)
    pool.leave("leaves", grace_seconds=0.05)
    assert pool.get("reloads") is kept  # back within the grace: the same run
    time.sleep(0.1)
    assert pool.peek("leaves") is None and len(pool) == 1  # a look sweeps, as any visit does
    assert pool.peek("reloads") is kept


def test_a_seat_that_never_trained_is_freed_sooner_than_one_that_did():
    class Untrained(Fake):
        step_count = 0

    class Trained(Fake):
        step_count = 3

    pool = SessionPool(Untrained, max_sessions=4, idle_seconds=60, untrained_seconds=0.05)
    pool.get("looked", make=Untrained)  # e.g. changed the learning rate, never pressed Step
    trained = pool.get("trained", make=Trained)
    time.sleep(0.1)
    assert pool.peek("looked") is None and pool.peek("trained") is trained


def test_a_learner_who_only_looks_keeps_their_seat_and_a_look_ends_a_reloads_grace():
    class Untrained(Fake):
        step_count = 0  # e.g. after a Reset: a network of their own, not trained yet

    pool = SessionPool(Untrained, max_sessions=4, idle_seconds=0.15, untrained_seconds=0.15)
    mine = pool.get("predicts")
    pool.get("left")
    pool.get("reloaded")
    pool.leave("reloaded", grace_seconds=0.1)
    pool.peek("reloaded")  # the reloaded page loads: a look
    for _ in range(6):  # 0.3 s of predictions: twice the idle limit
        time.sleep(0.05)
        assert pool.peek("predicts") is mine
    assert pool.peek("left") is None  # idle: freed
    assert pool.peek("reloaded") is None  # not back since: freed, as the idle one


def test_closing_one_tab_ends_its_own_run_not_another_tabs_and_keeps_the_seat():
    pool = fast_pool()
    run = pool.train("a", page="tab 2")
    session, _ = next(run)
    pool.leave("a", grace_seconds=0, page="tab 1", last=False)  # tab 1 closes; tab 2 plays on
    time.sleep(0.02)
    assert pool.running("a") == 1 and pool.get("b") and pool.peek("a") is session
    pool.leave("a", grace_seconds=0, page="tab 2", last=False)  # the playing tab closes (the other is still open)
    assert list(run) == [] and pool.running() == 0 and pool.peek("a") is session


def test_a_turn_in_flight_when_the_page_closes_does_not_undo_the_grace():
    pool = SessionPool(lambda: Stepper(0.05), max_sessions=4, idle_seconds=60, turn_seconds=0.0, report_seconds=0.01)
    run = pool.train("a", page="tab")
    next(run)
    turn = threading.Thread(target=lambda: list(run))  # the page's stream, resumed by gradio: a turn in flight
    turn.start()
    time.sleep(0.01)
    pool.leave("a", grace_seconds=0.1, page="tab")
    turn.join()
    time.sleep(0.15)
    assert pool.peek("other") is None and pool.running() == 0
    assert len(pool) == 0  # freed after the grace, not kept for the idle limit


def test_a_click_waiting_for_the_hardware_acts_on_the_network_a_reset_made_meanwhile():
    pool = SessionPool(Stepper, max_sessions=4, workers=1)
    old, new = pool.get("a"), Stepper()
    acted = []
    with pool.compute("someone's turn"):
        click = threading.Thread(target=lambda: acted.append(_click_step(pool, "a")))
        click.start()
        time.sleep(0.05)  # the click waits for the slot ...
        pool.replace("a", new)  # ... while the learner's Reset goes through
    click.join()
    assert acted == [new] and new.step_count == 1 and old.step_count == 0


def _click_step(pool, key):
    with pool.click(key) as session:
        session.step(1)
        return session
