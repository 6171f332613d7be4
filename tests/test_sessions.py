"""The session pool: seats, idle sessions freed, busy ones kept, learners never handed each other's session."""

import time

import pytest

from resnet.sessions import PoolFull, SessionPool


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

    from resnet.engine import Session, TrainConfig

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
