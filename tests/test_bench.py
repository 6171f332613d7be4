"""The benchmark's own arithmetic: its FLOP count is the model's, a tiny run's JSON is consistent with itself (no
loop beats the ceiling, telemetry costs no less than nothing, beyond the spread it prints), and a room is timed."""

import json

import pytest

from resnet import bench
from resnet.session import Session, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--batch", "4", "--steps", "1", "--precision", "fp32"]  # a step of 4 images: tens of ms on one core


def test_ceiling_counts_the_notebook_models_flops():
    # by hand, multiply-adds x 2: stem 3->64 at 32x32, block1 two 64->64 at 32x32, block2 64->128 (stride 2) and
    # 128->128 at 16x16 plus the 1x1 projection, block3 two 128->128 at 16x16, fc 128->10
    k = 2 * 9
    expected = (
        k * 3 * 64 * 32 * 32
        + 2 * k * 64 * 64 * 32 * 32
        + k * 64 * 128 * 16 * 16
        + k * 128 * 128 * 16 * 16
        + 2 * 64 * 128 * 16 * 16
        + 2 * k * 128 * 128 * 16 * 16
        + 2 * 128 * 10
    )
    step, flops = bench.ceiling_loop(Session(TrainConfig(batch_size=4, eval_every=0, precision="fp32")))
    assert abs(flops["gflop_per_image"] - expected / 1e9) < 1e-9
    assert abs(flops["gflop_per_image"] - 0.423) < 0.001  # the "~0.42 GFLOP forward per image"
    # training: forward, weight gradient and input gradient, except the images' gradient, which nobody needs
    stem = k * 3 * 64 * 32 * 32
    assert flops["train_gflop_per_image"] == pytest.approx(3 * expected / 1e9 - stem / 1e9, rel=1e-12)
    step(1)  # runs


def test_a_tiny_bench_run_is_consistent_with_itself(capsys):
    result = bench.main([*TINY, "--rounds", "9"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == result
    # the figures are medians over rounds, rounded to 0.1 img/s; the ratios are computed before rounding
    assert last["ratio"] == pytest.approx(last["engine_img_s"] / last["notebook_img_s"], rel=5e-3)
    assert last["ceiling_ratio"] == pytest.approx(last["ceiling_img_s"] / last["notebook_img_s"], rel=5e-3)
    for name in ("notebook", "engine", "engine_no_telemetry", "ceiling"):
        lo, hi = last["range_img_s"][name]
        assert lo <= last[f"{name}_img_s"] <= hi, name
    # the engine does the ceiling's work and more: it may come out above it only by the spread it prints
    assert last["engine_vs_ceiling"] <= 1 + last["engine_vs_ceiling_spread"]
    assert last["engine_img_s"] <= last["ceiling_img_s"] * (1 + last["engine_vs_ceiling_spread"])
    # and with telemetry it does the same step and records more: it is not faster, beyond the spread
    assert last["telemetry_overhead"] >= -last["telemetry_overhead_spread"]
    assert last["telemetry_overhead_spread"] >= 0 and last["engine_vs_ceiling_spread"] >= 0
    # the same holds between the best rounds, what the machine does when no neighbour is busy
    assert last["engine_vs_ceiling_best"] <= 1 + last["engine_vs_ceiling_spread"]
    assert last["telemetry_overhead_best"] >= -last["telemetry_overhead_spread"]


def test_the_bench_compares_one_session_with_telemetry_on_and_off():
    session = Session(TrainConfig(batch_size=4, eval_every=0, precision="fp32"))
    on, off = bench.session_loops(session)
    on(1)
    off(1)
    on(1)
    steps = session.history.steps
    assert [r["step"] for r in steps] == [1, 2, 3]  # one run, taking turns
    assert ["update_ratio" in r for r in steps] == [True, False, True]  # telemetry recorded on its turns only


def test_a_room_on_the_apps_scheduler_writes_its_figures(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "BENCH_DIR", tmp_path)  # where a bare --out name goes
    result = bench.main(["--room", "--sessions", "2", "--batch", "4", "--seconds", "0.5", "--out", "room.json"])
    assert json.loads((tmp_path / "room.json").read_text()) == result
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-2]) == result  # then the "written to" line
    # the app's CPU scheduler: one learner at a time, turns of a chart update's worth of steps (0.35 s)
    assert result["workers"] == 1 and result["turn_steps"] == 1 and min(result["session_steps"]) >= 1
    assert sum(result["session_steps"]) == result["learner_steps"]


def test_a_room_shares_the_pool_fairly_and_times_the_waits():
    # one step a turn, so that a second holds many turns
    result = bench.room(3, batch=4, seconds=1, device="cpu", turn_seconds=0.0)
    n, steps = result["sessions"], result["session_steps"]
    assert n == 3 and sum(steps) == result["learner_steps"] and min(steps) >= 3 and steps == result["session_turns"]
    # first come first served: nobody gets a round ahead of the others
    assert max(steps) - min(steps) <= 1
    assert result["learner_steps_s"] == pytest.approx(result["learner_steps"] / result["seconds"], rel=0.05)
    assert len(result["session_wait_p50_ms"]) == len(result["session_wait_p95_ms"]) == n
    for p50, p95 in zip(result["session_wait_p50_ms"], result["session_wait_p95_ms"]):
        assert 0 < p50 <= p95
    # one slot: a learner waits while the other n - 1 step, i.e. (n - 1) / n of a round
    rounds = result["learner_steps"] / n
    expected_ms = 1000 * result["seconds"] / rounds * (n - 1) / n
    assert expected_ms / 2 < result["wait_p50_ms"] < expected_ms * 2


def test_the_gpu_check_runs_whole_as_a_dry_run_on_this_machine(tmp_path, monkeypatch, capsys):
    # what a lent GPU will run, end to end, at toy sizes: every part reports and the JSON lands under assets/bench
    monkeypatch.setattr(bench, "BENCH_DIR", tmp_path)
    argv = ["--gpu-check", "--device", "cpu", "--batch", "4", "--steps", "1", "--rounds", "1"]
    result = bench.main([*argv, "--sessions", "2", "--seconds", "0.5"])
    assert [p.name for p in tmp_path.iterdir()] == ["gpu_check_cpu__a_dry_run.json"]
    assert json.loads((tmp_path / "gpu_check_cpu__a_dry_run.json").read_text()) == result
    for loop in ("notebook", "engine", "engine_no_telemetry", "engine_eager", "engine_compiled", "ceiling"):
        assert result[f"{loop}_img_s"] > 0, loop
    assert result["one_learner_b64"]["steps_s"] > 0 and result["room"]["sessions"] == 2
    assert result["room_eager"]["step_mode"] == "eager" and result["room_one_stream"]["sessions"] == 2
    assert result["loss_rel_diff"] < 1e-2


def test_without_out_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "BENCH_DIR", tmp_path)
    bench.main(["--room", "--sessions", "2", "--batch", "4", "--seconds", "0"])
    assert list(tmp_path.iterdir()) == []


def test_percentile_interpolates_between_ranks():
    assert bench.percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert bench.percentile([1.0, 2.0], 0.95) == pytest.approx(1.95)
    assert bench.percentile([5.0], 0.95) == 5.0
