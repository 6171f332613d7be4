"""The load test itself: it ends, always, with its JSON line or a clear error and a non-zero exit, never silence.
A 2-learner room through the real app (`python app.py`, started by the harness), the app-speed figures from the
suite's app, and, without an app, a server that dies at start and one that never answers (both modes)."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import load_test

SCRIPT = Path(load_test.__file__)


def harness(*args: str, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    t = time.monotonic()
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
    return out, time.monotonic() - t


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_two_learners_through_the_app_end_with_a_clean_json_line(tmp_path):
    out, _ = harness("--sessions", "2", "--seconds", "3", "--idle-seconds", "4", "--out", str(tmp_path / "r.json"),
                     timeout=240)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    result = last_json(out.stdout)
    assert result["errors"] == 0, result["error_messages"]
    assert result["cross_talk"] == 0 and result["orphan_runs"] <= 0 and result["runs_after"] == 0
    assert result["actions"] > 0 and result["device"] != "unknown"
    assert result["room_before"]["seats"] == 0  # the harness takes no seat of its own: the baseline is learner 0
    assert result["room_peak"]["seats"] <= 2 and result["room_after"]["seats"] == 0
    assert result["rss_before_mb"] > 0 and result["rss_after_over_before"] is not None
    assert json.loads((tmp_path / "r.json").read_text()) == result  # --out writes the same JSON
    assert "the app answers after" in out.stdout  # progress lines, before the JSON


def test_app_speed_ends_with_its_figures(app_url):
    result = load_test.app_speed(2, batch=8, timeout=60, url=app_url)
    assert result["app_img_s"] > 0 and result["updates_per_s"] > 0 and result["step_roundtrip_ms"] > 0
    assert result["device"] != "unknown"


def test_an_app_that_dies_at_start_is_reported_at_once_with_its_log(tmp_path, monkeypatch):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'AttributeError: the app is broken'\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(load_test.sys, "executable", str(fake))
    t = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with code 3(.|\n)*the app is broken"):
        load_test.start_server(load_test.free_port(), idle_seconds=8, timeout=60)
    assert time.monotonic() - t < 10  # not the start timeout's minutes of silence


@pytest.mark.parametrize("mode", [["--sessions", "2"], ["--app-speed"]])
def test_a_server_that_never_answers_ends_at_the_deadline_with_an_error_line(mode):
    with socket.socket() as s:  # accepts connections (the kernel does), never answers one
        s.bind(("127.0.0.1", 0))
        s.listen(200)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/"
        out, took = harness("--url", url, *mode, "--seconds", "2", "--deadline", "3", timeout=60)
    assert out.returncode == 3
    assert "did not finish within 3 s" in last_json(out.stdout)["error"]
    assert "did not finish" in out.stderr
    assert took < 30


def test_percentiles_stay_within_the_values():
    assert load_test.percentile([0.03, 0.01], 50, 2) == 0.02
    assert load_test.percentile([1.0, 2.0, 3.0], 95) <= 3.0
    assert load_test.percentile([], 95) == 0 and load_test.percentile([7.0], 50) == 7.0


def test_a_bare_out_name_lands_in_assets_bench(tmp_path, monkeypatch):
    monkeypatch.setattr(load_test, "BENCH_DIR", tmp_path / "bench")
    load_test.write({"a": 1}, "x.json")
    assert json.loads((tmp_path / "bench" / "x.json").read_text()) == {"a": 1}


def test_a_gil_profile_says_each_process_share_and_where_the_time_went(tmp_path):
    """py-spy's raw lines (root first, a count last) -> per process the share of the run its GIL was held, and the
    functions' shares with callees and alone, with the plumbing every stack has left out."""
    raw = tmp_path / "gil.txt"
    raw.write_text(
        'process 11:"python app.py";Thread.run (threading.py:1012);step (app.py:790);Session.step '
        "(resnet/session.py:520) 30\n"
        'process 11:"python app.py";Thread.run (threading.py:1012);predict (app.py:880) 10\n'
        'process 10:"python -m resnet.front";process 12:"python app.py";Handle._run (asyncio/events.py:80);process_api '
        "(/usr/lib/python3.12/site-packages/gradio/blocks.py:2100) 20\n"
    )
    found = load_test.gil_shares(raw, possible=100)
    assert found["gil_held_share_per_process"] == [0.4, 0.2] and found["samples"] == 60
    top = dict(found["top"])
    assert top["step [app.py]"] == top["Session.step [resnet/session.py]"] == 0.5
    assert top["process_api [gradio/blocks.py]"] == round(20 / 60, 3) and top["predict [app.py]"] == round(10 / 60, 3)
    assert not any("threading.py" in name for name in top)  # a thread's start is in every stack: no information
    assert dict(found["self"]) == {
        "Session.step [resnet/session.py]": 0.5, "process_api [gradio/blocks.py]": 0.333, "predict [app.py]": 0.167
    }  # fmt: skip
