"""The benchmark's own arithmetic: its FLOP count is the model's, and a tiny run prints the JSON line it promises."""

import json

import pytest

from resnet import bench
from resnet.engine import Session, TrainConfig


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
    bound = bench.ceiling(Session(TrainConfig(batch_size=4, eval_every=0, precision="fp32")), reps=1)
    assert abs(bound["gflop_per_image"] - expected / 1e9) < 1e-9
    assert abs(bound["gflop_per_image"] - 0.423) < 0.001  # the "~0.42 GFLOP forward per image"
    assert bound["ceiling_img_s"] > 0 and bound["layers_gflop_s"] > 0


def test_a_tiny_bench_run_ends_with_its_json_line(capsys):
    result = bench.main(["--batch", "4", "--steps", "1", "--rounds", "1", "--precision", "fp32"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == result
    assert {
        "notebook_img_s",
        "engine_img_s",
        "ratio",
        "telemetry_overhead",
        "ceiling_img_s",
        "ceiling_ratio",
    } <= last.keys()
    # the figures are rounded to 0.1 img/s, the ratio is computed before rounding
    assert last["ratio"] == pytest.approx(last["engine_img_s"] / last["notebook_img_s"], rel=5e-3)
