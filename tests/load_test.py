"""A workshop in a box: N learners at once against a launched app, each doing what a learner does.

    python tests/load_test.py --sessions 16 --seconds 60 [--url http://host:port/]

Without --url it starts `python app.py` itself (idle sessions freed after a few seconds, so memory can be seen to
come back). Reports errors, p50/p95 latency of Step and Predict, the server's memory before/during/after, and
cross-talk: a Step whose step count is not this learner's own count + 1, and orphaned runs: the server's count of
running Plays (its /room endpoint) above the learners playing. Learners Reset and Load a model while playing, as
impatient learners do. Last line: one JSON object.
"""

import argparse
import json
import os
import random
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from gradio_client import Client, handle_file

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "assets" / "examples").glob("*.png"))
# gradio_client opens a new httpx client per request, and each builds a TLS context (CA bundle parsed: ~10 ms of
# CPU) even for http://. Sixteen learners in one process spent most of their CPU there, on the 2 cores the server
# needs; a browser keeps its connection. One context, made once, is handed to every request instead.
TLS = ssl.create_default_context()


def step_of(outputs) -> int:
    return int(outputs[4].split("**Step ")[1].split("**")[0])


def rss_mb(pid: int) -> float:
    total = 0.0
    for p in [pid, *children(pid)]:
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
        except (OSError, StopIteration):
            pass
    return total


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def connect(url: str) -> Client:
    return Client(url, verbose=False, ssl_verify=TLS)  # httpx takes a context where gradio_client passes verify=


PLAYING = [0]  # learners of this harness inside a Play action now (the server's running count may not exceed it)
PLAYING_LOCK = threading.Lock()


def playing(delta: int) -> None:
    with PLAYING_LOCK:
        PLAYING[0] += delta


class Learner(threading.Thread):
    def __init__(self, url: str, seconds: float, seed: int):
        super().__init__(daemon=True)
        self.url, self.seconds, self.rng = url, seconds, random.Random(seed)
        self.step_ms, self.predict_ms, self.errors, self.cross_talk = [], [], [], 0
        self.previous = "start"  # the action before, to explain a cross-talk count

    def reset_args(self) -> tuple:
        return "shapes", "notebook (0.6M parameters)", self.rng.randrange(100), "adam", 0.001, 32

    def timed(self, bucket, *args, **kwargs):
        t = time.perf_counter()
        out = self.client.predict(*args, **kwargs)
        bucket.append((time.perf_counter() - t) * 1000)
        return out

    def run(self):
        try:
            self.client = connect(self.url)
            self.client.predict(api_name="/load")
            out = self.client.predict(*self.reset_args(), api_name="/reset")
            count = step_of(out)
            self.model_file = self.client.predict(api_name="/download_model")  # to Load during Play
        except Exception as e:  # noqa: BLE001 -- counted and reported, like every other failure
            self.errors.append(f"start: {e}")
            return
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            action = self.rng.choice(
                ["step", "step", "predict", "predict", "play", "shortcut", "lr", "reset_in_play", "load_in_play"]
            )
            try:
                if action == "step":
                    now = step_of(self.timed(self.step_ms, api_name="/step"))
                    if now not in (count + 1, count):  # +0: the step was rejected
                        self.cross_talk += 1
                        print(f"cross-talk? expected step {count + 1}, got {now} (after {self.previous})")
                    count = now
                elif action == "predict":
                    self.timed(self.predict_ms, handle_file(str(self.rng.choice(EXAMPLES))), api_name="/predict_image")
                elif action in ("play", "reset_in_play", "load_in_play"):
                    playing(+1)
                    try:
                        job = self.client.submit(api_name="/play")
                        while len(job.outputs()) < 2 and not job.done():  # iterating a Job polls every 1 ms
                            time.sleep(0.05)
                        if action == "play":  # Pause: no turn runs after it returns, and it shows the last one
                            count = step_of(self.client.predict(api_name="/pause"))
                        elif action == "reset_in_play":  # the old run must end, not train on behind the new one
                            count = step_of(self.client.predict(*self.reset_args(), api_name="/reset"))
                        else:
                            out = self.client.predict(handle_file(self.model_file), "", None, api_name="/load_model")
                            count = step_of(out)
                    finally:
                        playing(-1)
                elif action == "shortcut":
                    self.client.predict(self.rng.random() < 0.5, api_name="/all_shortcuts")
                else:
                    self.client.predict("adam", self.rng.choice([1e-3, 5e-4, 2e-3]), 32, api_name="/configure")
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"{action}: {type(e).__name__}: {e}")
            self.previous = action


def percentile(values, q):
    return round(statistics.quantiles(values, n=100)[q - 1], 1) if len(values) >= 2 else (values or [0])[0]


def start_server(port: int, idle_seconds: float) -> subprocess.Popen:
    env = {
        **os.environ,
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "PLAYGROUND_IDLE_SECONDS": str(idle_seconds),
        "PLAYGROUND_PLAY_SECONDS": "30",
    }
    server = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(240):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("the app did not start within 2 minutes")


def run(sessions: int, seconds: float, url: str | None = None, idle_seconds: float = 8) -> dict:
    server = None
    if url is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = start_server(port, idle_seconds)
        url = f"http://127.0.0.1:{port}/"
    try:
        pid = server.pid if server else None
        one = Learner(url, 0, seed=-1)
        one.run()  # one learner's session exists: the baseline
        rss_before = rss_mb(pid) if pid else 0.0
        learners = [Learner(url, seconds, seed=i) for i in range(sessions)]
        for learner in learners:
            learner.start()
        peak, orphans, room = rss_before, 0, connect(url)
        while any(learner.is_alive() for learner in learners):
            peak = max(peak, rss_mb(pid) if pid else 0.0)
            with PLAYING_LOCK:  # a run ends on the server before the Pause, Reset or Load that ends it returns
                in_play = PLAYING[0]
                running = room.predict(api_name="/room")["running"]
            orphans = max(orphans, running - in_play)
            time.sleep(0.5)
        running_after = room.predict(api_name="/room")["running"]
        rss_after = 0.0
        if pid:
            time.sleep(idle_seconds + 2)
            connect(url).predict(api_name="/load")  # a visit sweeps the idle sessions out
            time.sleep(1)
            rss_after = rss_mb(pid)
    finally:
        if server:
            server.terminate()
            server.wait(timeout=30)
    step_ms = [t for learner in learners for t in learner.step_ms]
    predict_ms = [t for learner in learners for t in learner.predict_ms]
    errors = [e for learner in learners for e in learner.errors]
    for e in errors[:10]:
        print("error:", e[:300])
    result = {
        "sessions": sessions,
        "seconds": seconds,
        "errors": len(errors),
        "steps": len(step_ms),
        "predictions": len(predict_ms),
        "p50_step_ms": percentile(step_ms, 50),
        "p95_step_ms": percentile(step_ms, 95),
        "p50_predict_ms": percentile(predict_ms, 50),
        "p95_predict_ms": percentile(predict_ms, 95),
        "rss_one_session_mb": round(rss_before),
        "rss_peak_mb": round(peak),
        "rss_after_mb": round(rss_after),
        "cross_talk": sum(learner.cross_talk for learner in learners),
        "orphan_runs": orphans,  # most runs the server had beyond the learners then playing
        "runs_after": running_after,  # runs still going once every learner stopped
    }
    print(
        f"{sessions} learners for {seconds:.0f} s: {len(step_ms)} steps, {len(predict_ms)} predictions, "
        f"{len(errors)} errors; step p50/p95 {result['p50_step_ms']}/{result['p95_step_ms']} ms, predict "
        f"p50/p95 {result['p50_predict_ms']}/{result['p95_predict_ms']} ms; memory {result['rss_one_session_mb']} "
        f"-> peak {result['rss_peak_mb']} -> after {result['rss_after_mb']} MB; orphaned runs {orphans}, "
        f"runs after {running_after}"
    )
    return result


def app_speed(seconds: float, batch: int = 64) -> dict:
    """One learner, the app to itself (for `python -m resnet.bench --app`): images/s while Play streams the charts
    at their normal rate, and the Step button's round trip against the step's own time (from the status line)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start_server(port, idle_seconds=600)
    try:
        client = connect(f"http://127.0.0.1:{port}/")
        client.predict(api_name="/load")
        client.predict("shapes", "notebook (0.6M parameters)", 0, "adam", 0.001, batch, api_name="/reset")
        for _ in range(3):
            client.predict(api_name="/step")  # warm-up
        trips = []
        for _ in range(10):
            t = time.perf_counter()
            client.predict(api_name="/step")
            trips.append((time.perf_counter() - t) * 1000)
        first = step_of(client.predict(api_name="/load"))
        job = client.submit(api_name="/play")
        t = time.perf_counter()
        updates = 0
        for out in job:
            updates += 1
            last = step_of(out)
            if time.perf_counter() - t > seconds:
                break
        elapsed = time.perf_counter() - t
        job.cancel()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "app_img_s": round((last - first) * batch / elapsed, 1),
        "updates_per_s": round(updates / elapsed, 2),
        "step_roundtrip_ms": round(statistics.median(trips), 1),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--url", default=None, help="an app already running; default: start one")
    p.add_argument("--app-speed", action="store_true", help="one learner's training speed through the app")
    args = p.parse_args(argv)
    print(json.dumps(app_speed(args.seconds) if args.app_speed else run(args.sessions, args.seconds, args.url)))


if __name__ == "__main__":
    main()
