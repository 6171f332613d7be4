"""The captured step (resnet/graphstep.py): the same training as eager, captured again only when it must be.

On a CPU the step runs its static body without capture ("static"), which checks everything but the capture itself;
the graph-vs-eager test needs a GPU and is skipped without one.
"""

import gc
import math
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from resnet import graphstep, pool
from resnet.data import make_shapes
from resnet.model import cifar_config
from resnet.session import Session, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


# on the CPU wherever a GPU is: these check the step's logic to fp32 rounding (a GPU's "fp32" convolutions are TF32)
CONFIG = {"batch_size": 16, "eval_every": 0, "precision": "fp32", "device": "cpu"}


def session(mode: str, **changes) -> Session:
    return Session(TrainConfig(**{**CONFIG, "step_mode": mode, **changes}), cifar_config(1, width=8))


def state_of(s: Session) -> dict:
    return {k: v.clone() for k, v in s.model.state_dict().items()}


def a_run(s: Session) -> list[dict]:
    """A learner's clicks: steps, a block's shortcut off, a divergent lr, a new batch size; the reports."""
    reports = [s.step(3)]
    s.set_shortcut(False, 2)
    reports.append(s.step(2))
    s.configure(lr=1e3)
    reports.append(s.step(2))
    s.configure(lr=1e-2 if s.config.optimizer == "sgd" else 1e-3, batch_size=8)
    reports.append(s.step(3))
    return reports


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_static_step_trains_as_the_eager_one_does(optimizer):
    lr = 1e-2 if optimizer == "sgd" else 1e-3
    eager, static = session("eager", optimizer=optimizer, lr=lr), session("static", optimizer=optimizer, lr=lr)
    eager_reports, static_reports = a_run(eager), a_run(static)
    # the same steps taken and rejected (lr 1000: both of its steps), the same losses and gradients (the fused
    # optimizer the graph needs rounds differently from the eager foreach one: fp32 rounding, no more)
    assert [r["rejected"] for r in static_reports] == [r["rejected"] for r in eager_reports] == [0, 0, 2, 0]
    assert [r["step"] for r in static.history.steps] == [r["step"] for r in eager.history.steps]
    for a, b in zip(eager.history.steps, static.history.steps):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-3)
        for name in a["grad_norm"]:
            assert math.isclose(a["grad_norm"][name], b["grad_norm"][name], rel_tol=1e-2, abs_tol=1e-6)
    e, s = state_of(eager), state_of(static)
    assert all(torch.allclose(e[k].float(), s[k].float(), rtol=1e-3, atol=1e-4) for k in e)


def test_a_rejected_static_step_restores_weights_statistics_and_optimizer_state():
    s = session("static")
    s.step(3)  # the first step is eager (the optimizer has no state to capture yet); then static ones
    assert s.captures == 1
    before = state_of(s)
    moments = {id(p): {k: v.clone() for k, v in st.items()} for p, st in s.optimizer.state.items()}
    x, y = s.next_batch()
    x[0, 0, 0, 0] = float("nan")
    assert "not finite" in s.train_step(x, y)["rejected"]
    after = state_of(s)
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running statistics
    for p, st in s.optimizer.state.items():
        assert all(torch.equal(v, moments[id(p)][k]) for k, v in st.items())
    assert s.step(1)["done"] == 1 and s.step_count == 4


def test_a_turn_of_static_steps_is_read_once_and_a_diverged_step_in_it_undoes_itself():
    # Play's turn on a GPU: steps launched back to back, read together at the end, so the host never waits between
    # them; a step that diverges mid-turn must undo itself on the device, before the next one starts from it
    batches = []
    eager, static = session("eager", eval_every=3), session("static", eval_every=3)
    for s in (eager, static):
        s.step(1)  # the optimizer's first step (eager for both)
    for i in range(6):
        x, y = eager.next_batch()
        if i == 2:
            x[0, 0, 0, 0] = float("nan")
        batches.append((x, y))
    reads = []
    records = static._records
    static._records = lambda launched: (launched and reads.append(len(launched)), records(launched))[1]
    reports = {}
    for name, s in (("eager", eager), ("static", static)):
        feed = iter(batches)
        reports[name] = s.step(6, batch=lambda feed=feed: next(feed))
    assert reports["static"]["rejected"] == reports["eager"]["rejected"] == 1
    assert reports["static"]["messages"] == reports["eager"]["messages"]  # "step 4 rejected: loss not finite ..."
    assert static.step_count == eager.step_count == 6
    # read only where an evaluation may be due (every 3 steps): steps 2-3 (evaluated at 3), then three launches of
    # which one was undone (at 5, none due), then one more (6: evaluated). Never a read per step.
    assert reads == [2, 3, 1]
    assert [e["step"] for e in static.history.evals] == [e["step"] for e in eager.history.evals] == [3, 6]
    for a, b in zip(eager.history.evals, static.history.evals):  # evaluated on the weights of that very step
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-3)
    rejected = [e for e in static.history.events if e["kind"] == "rejected"]
    assert [e["step"] for e in rejected] == [3]  # after step 3, as the eager session records it
    e, s = state_of(eager), state_of(static)
    assert all(torch.allclose(e[k].float(), s[k].float(), rtol=1e-3, atol=1e-4) for k in e)


def test_a_static_step_makes_the_very_batches_next_batch_would():
    # the captured step makes its own batch from the session's permutation and augmentation draws (a few launches
    # instead of ~20): over epochs, it must see what an eager session is fed, and leave the random stream where
    # that one does (same seed, same run)
    data = make_shapes(n_train=40, n_test=20, seed=0)  # an epoch is 2 batches of 16 (and 8 images left over)
    eager, static = (Session(TrainConfig(**{**CONFIG, "step_mode": m}), cifar_config(1, width=8), data=data)
                     for m in ("eager", "static"))  # fmt: skip
    eager.step(7)
    static.step(7)
    assert static._static is not None and static._static.key.makes_batch
    assert static._cursor == eager._cursor and torch.equal(static._order, eager._order)
    assert torch.equal(static.generator.get_state(), eager.generator.get_state())
    for a, b in zip(eager.history.steps, static.history.steps):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-4)
    # the learner's images mixed in: batches copied in for those steps (another capture), then made again
    x, y = static.next_batch()
    eager.next_batch()
    captures = static.captures
    for s in (eager, static):
        s.mix_in(x[:2], y[:2], steps=2)
        s.step(3)
    assert static.captures == captures + 2 and static._static.key.makes_batch
    assert torch.equal(static.generator.get_state(), eager.generator.get_state())
    for a, b in zip(eager.history.steps, static.history.steps):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-4)


def test_an_error_making_a_turns_next_batch_leaves_the_steps_before_it_standing(monkeypatch):
    # out of memory drawing the next epoch's permutation, mid-turn: the steps launched before it count and stand
    data = make_shapes(n_train=40, n_test=20, seed=0)  # an epoch is 2 batches of 16
    s = Session(TrainConfig(**{**CONFIG, "step_mode": "static"}), cifar_config(1, width=8), data=data)
    s.step(3)  # the eager first step, the warm-ups; the next epoch starts at the 5th step
    randperm = torch.randperm

    def out_of_memory(*args, **kw):
        if "out" in kw:  # the epoch's permutation drawn anew, in place
            raise torch.OutOfMemoryError("simulated")
        return randperm(*args, **kw)

    monkeypatch.setattr(torch, "randperm", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        s.step(4)
    monkeypatch.setattr(torch, "randperm", randperm)
    assert s.step_count == 4 and [r["step"] for r in s.history.steps] == [1, 2, 3, 4]
    # the 4th step's weights are there, not the 3rd's: as in the same run without the error
    replay = Session(TrainConfig(**{**CONFIG, "step_mode": "static"}), cifar_config(1, width=8), data=data)
    replay.step(4)
    after = state_of(s)
    assert all(torch.allclose(after[k].float(), v.float(), rtol=1e-5, atol=1e-6) for k, v in state_of(replay).items())


def test_the_undo_decided_on_the_device_puts_back_every_dtype_even_after_nan():
    from resnet.undo import Snapshot

    tensors = [torch.ones(2, 3), torch.tensor(5, dtype=torch.long), torch.tensor(0.5), torch.zeros(4).t()]
    before = [t.clone() for t in tensors]
    snapshot = Snapshot(tensors)
    for t in tensors:
        t.add_(1)
    tensors[0][0, 0] = float("nan")
    snapshot.keep_if(torch.tensor(True))  # the step stood: its values stay, NaN and all
    assert tensors[1].item() == 6 and math.isnan(tensors[0][0, 0].item())
    snapshot.keep_if(torch.tensor(False))  # it did not: everything as it was, bit for bit
    assert all(torch.equal(t, b) for t, b in zip(tensors, before))


def test_what_makes_a_new_capture_and_what_does_not():
    s = session("static")
    s.step(3)
    assert s.captures == 1
    s.configure(lr=3e-3)  # read from a device tensor: the capture holds
    s.step(2)
    assert s.captures == 1 and s.optimizer.param_groups[0]["lr"].item() == pytest.approx(3e-3)
    s.set_shortcut(False, 1)  # another forward
    s.step(1)
    assert s.captures == 2
    s.set_shortcut(False, 1)  # no change: no new capture
    s.step(1)
    assert s.captures == 2
    s.configure(batch_size=8)  # another shape
    s.step(1)
    assert s.captures == 3
    s.configure(optimizer="sgd")  # another optimizer: its first step is eager, then a capture
    s.step(2)
    assert s.captures == 4
    s.config.telemetry = False  # another stats buffer
    s.step(1)
    assert s.captures == 5
    s.teach(*s.next_batch())  # a one-off batch is stepped eagerly: no capture for it
    s.step(1)
    assert s.captures == 5


def test_sgd_steps_a_projection_whose_shortcut_comes_back_on():
    # its first gradient comes after the other parameters' momentum buffers exist (fused SGD failed on that)
    s = session("static", optimizer="sgd", lr=1e-2)
    s.set_shortcut(False, 2)
    s.step(3)
    s.set_shortcut(True, 2)
    assert s.step(2)["done"] == 2
    assert s.history.steps[-1]["grad_norm"]["block2.shortcut"] > 0


def test_a_session_with_a_static_step_is_freed_by_reference_counting():
    # the pool frees a departed learner's session by dropping it (no garbage collection: it stalls the room), so the
    # step must not hold its session in a cycle (on a GPU: the weights, copies and graph memory would stay)
    s = session("static")
    s.step(3)
    assert s._static is not None
    gone = weakref.ref(s)
    gc.disable()
    try:
        del s
        assert gone() is None
    finally:
        gc.enable()


def test_a_graph_dropped_with_its_session_is_freed_under_the_capture_lock_later(monkeypatch):
    # freeing a graph while another learner's is being captured would pull memory from under that capture: a graph
    # dropped with its session (a learner leaves) waits for the pool's next release of memory (or the next capture,
    # or empty_cache), which take the lock
    monkeypatch.setattr(graphstep, "_retired", [])
    s = session("static")
    s.step(3)
    graph = s._static.graph = object()  # as a captured step holds its graph
    del s
    assert graphstep._retired == [graph]
    pool.release_memory()  # what the pool does when it has freed a departed learner's session
    assert graphstep._retired == []


def test_a_big_batch_is_stepped_eagerly():
    # a graph would keep a big step's memory for good; launches are a small part of such a step anyway
    s = session("static", batch_size=graphstep.MAX_CAPTURED_BATCH + 1)
    s.step(3)
    assert s.captures == 0 and s.step_count == 3


def test_a_capture_that_fails_leaves_eager_steps_and_training_goes_on(monkeypatch):
    # "graph" on a machine without a GPU: the capture fails, as it would on a GPU for any other reason
    monkeypatch.setattr(graphstep, "_broken", None)  # and no capture is tried after one failed: not past this test
    s, eager = session("graph"), session("eager")
    report = s.step(4)
    assert report["done"] == 4 and s.step_mode == "eager" and s.summary()["step_mode"] == "eager"
    eager.step(4)
    for a, b in zip(eager.history.steps, s.history.steps):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-3)


def test_eager_everywhere_but_cuda_by_default():
    s = session("auto", device="auto")
    assert s.step_mode == ("graph" if s.device.type == "cuda" else "eager")
    with pytest.raises(ValueError, match="step mode"):
        session("fast")


def test_every_promise_of_a_session_its_twins_and_the_guided_experiments_holds_on_the_static_step():
    # their whole test files again, every session stepping through the graph's body instead of eagerly: undo of
    # divergent and out-of-memory steps, telemetry, evaluation, teach, mixing in, same seed same run, the twins, the
    # guided experiments' claims, predictions
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)]), "CUDA_VISIBLE_DEVICES": ""}
    files = ["tests/test_session.py", "tests/test_twin.py", "tests/test_guided.py", "tests/test_inference.py"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "static_step_plugin", *files],
        cwd=tests.parent, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_captured_step_trains_as_the_eager_one_does_on_a_gpu():
    runs = {}
    for mode in ("eager", "graph"):
        s = Session(TrainConfig(batch_size=64, eval_every=0, step_mode=mode, augment=False, seed=3))
        a_run(s)
        runs[mode] = s
    graph, eager = runs["graph"], runs["eager"]
    assert graph.step_mode == "graph" and graph._static is not None and graph._static.graph is not None
    assert [r["step"] for r in graph.history.steps] == [r["step"] for r in eager.history.steps]
    for a, b in zip(eager.history.steps, graph.history.steps):  # bf16: its rounding, over ten steps
        assert math.isclose(a["loss"], b["loss"], rel_tol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_learners_training_at_once_on_their_own_streams_train_as_one_alone():
    # four learners' turns overlap on the card, each on its own stream: nobody's steps leak into another's
    import threading

    config = TrainConfig(batch_size=64, eval_every=5, seed=1)
    alone = Session(config)
    alone.step(1)
    expected = [alone.step(8)["last"]["loss"] for _ in range(4)]
    room = [Session(config) for _ in range(4)]
    assert all(s.stream is not None and s.step_mode == "graph" for s in room)
    losses = {i: [] for i in range(4)}

    def play(i):
        room[i].step(1)
        for _ in range(4):
            losses[i].append(room[i].step(8)["last"]["loss"])

    threads = [threading.Thread(target=play, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        # the same seed, the same run (cuDNN may pick other kernels under load: their rounding, no more)
        assert losses[i] == pytest.approx(expected, rel=1e-3), i
    assert [e["step"] for e in room[0].history.evals] == [5, 10, 15, 20, 25, 30]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_no_learner_trains_on_the_stream_captures_use():
    # torch hands out 32 pooled streams per priority in turn: a room of more than 32 learners shares them, and a
    # learner stepping on the capture stream during another's capture would be recorded into that graph
    s = Session(TrainConfig(batch_size=64, eval_every=0))
    s.step(4)  # a capture: the capture stream exists
    capture = graphstep._capture_streams[s.device.index]
    room = [Session(TrainConfig(batch_size=8, eval_every=0)) for _ in range(40)]
    assert all(r.stream != capture for r in room + [s]) and len({r.stream for r in room}) > 1
