"""The headless experiment writes what it promises (report.html offline, history.csv, summary.json) and fails clearly.

A tiny setting (3 steps, 8 and 14 layers, a 200-image dataset): the files and their contents, not the result;
the real --quick run is for people.
"""

import csv
import json
import math

import pytest

from resnet import data
from resnet.data import make_shapes
from resnet.experiment import ExperimentConfig, degradation, main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(data, "DATASETS", dict(data.DATASETS))  # leave the real registry and cache untouched
    monkeypatch.setattr(data, "_CACHE", {})
    data.register("tiny", lambda: make_shapes(n_train=200, n_test=100))
    return "tiny"


def test_main_writes_a_report_a_history_and_a_summary(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    summary = main(
        [
            "--out",
            str(out),
            "--dataset",
            tiny,
            "--depths",
            "8",
            "14",
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--eval-every",
            "2",
            "--eval-size",
            "20",
            "--final-eval-size",
            "40",
            "--lesion-size",
            "20",
            "--loss-tail",
            "2",
            "--precision",
            "fp32",
            "--no-progress",
        ]
    )

    saved = json.loads((out / "summary.json").read_text())
    assert saved["results"] == summary["results"]
    assert [(r["depth"], r["shortcut"]) for r in saved["results"]] == [(8, True), (8, False), (14, True), (14, False)]
    for r in saved["results"]:
        assert math.isfinite(r["train_loss"]) and r["train_loss"] > 0 and 0 <= r["held_out_acc"] <= 1
        assert r["steps"] == 3
    assert saved["config"]["steps"] == 3 and saved["config"]["depths"] == [8, 14]
    assert set(saved["degradation"]) >= {"deep_plain_above_shallow_plain", "deep_plain_above_deep_residual"}
    assert [r["block"] for r in saved["lesions"]["14"]["plain"]] == [None, *range(1, 7)]

    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    train = [r for r in rows if r["split"] == "train"]
    held_out = [r for r in rows if r["split"] == "held_out"]
    assert len(train) == 4 * 3 and len(held_out) == 4 * 1  # every step of the 4 nets; one evaluation (step 2)
    assert {(r["depth"], r["net"]) for r in rows} == {(d, n) for d in ("8", "14") for n in ("residual", "plain")}
    # the summary's training loss is the mean of the csv's last loss_tail=2 steps
    last = [float(r["loss"]) for r in train if r["depth"] == "8" and r["net"] == "plain"][-2:]
    assert saved["results"][1]["train_loss"] == pytest.approx(sum(last) / 2)

    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.count("Plotly.newPlot") == 2 + 4 * 2  # every figure
    assert '<script src="http' not in page and len(page) > 1_000_000  # plotly.js inline: opens offline

    printed = capsys.readouterr().out
    assert "held-out acc" in printed and "deep (14) plain above shallow (8) plain" in printed


def test_bad_settings_fail_clearly(tiny, tmp_path):
    with pytest.raises(ValueError, match="6n\\+2"):
        ExperimentConfig(depths=(21,))
    with pytest.raises(SystemExit, match="6n\\+2"):
        main(["--out", str(tmp_path), "--depths", "20", "21"])
    with pytest.raises(SystemExit, match="unknown dataset"):
        main(["--out", str(tmp_path), "--dataset", "nope", "--depths", "8", "--steps", "1", "--no-progress"])


def test_degradation_compares_deepest_and_shallowest():
    rows = [
        {"depth": 20, "net": "residual", "train_loss": 0.3},
        {"depth": 20, "net": "plain", "train_loss": 0.4},
        {"depth": 56, "net": "residual", "train_loss": 0.35},
        {"depth": 56, "net": "plain", "train_loss": 0.38},
    ]
    assert degradation(rows) == {
        "deep_plain_above_shallow_plain": False,
        "deep_plain_above_deep_residual": True,
        "deep": 56,
        "shallow": 20,
    }


def test_guided_records_each_run_small_with_its_machine_and_charts_it_back(tmp_path, capsys):
    """--guided --fast --record: a table of effects, and per experiment a JSON the app can chart as a recorded run."""
    from resnet import charts, guided

    ids = ["lr_1000", "drawing_gradients"]
    rows = main(["--guided", "--fast", "--only", *ids, "--record", str(tmp_path), "--no-progress"])

    assert [r["experiment"] for r in rows] == ids and all(r["holds"] for r in rows)
    printed = capsys.readouterr().out
    assert "all_rejected" in printed and "stem_ratio" in printed and "The claim holds." in printed
    for i in ids:
        path = tmp_path / f"{i}.json"
        assert path.stat().st_size < 200_000
        saved = json.loads(path.read_text())
        assert (
            saved["command"]
            == f"python -m resnet.experiment --guided --fast --only {' '.join(ids)} --record {tmp_path} --no-progress"
        )
        assert set(saved["machine"]) >= {"cpu", "amx", "avx512_bf16", "avx2", "torch", "date", "precision"}
        assert saved["effect"]["holds"] and saved["setup"]["layers"] == guided.get(i).fast.layers
    recorded = guided.load_recorded("lr_1000", tmp_path)
    history = recorded["history"]
    assert [r["step"] for r in history.steps] == [1, 2, 3, 4, 5]  # the rejected step left no record
    assert [e["kind"] for e in history.events] == ["lr", "rejected", "lr"]
    figure = charts.loss_figure(history)
    assert figure["data"][0]["x"] == [1, 2, 3, 4, 5]
    with pytest.raises(SystemExit, match="unknown experiment"):
        main(["--guided", "--only", "nope"])
    with pytest.raises(SystemExit):
        main(["--steps", "3"])  # without --guided, --out is required
