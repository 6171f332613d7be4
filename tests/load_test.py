"""A workshop in a box: N learners at once against a launched app, each doing what a learner does.

    python tests/load_test.py --sessions 16 --seconds 60 [--url http://host:port/] [--out name.json]
    python tests/load_test.py --app-speed --seconds 30        # one learner's training speed through the app

Without --url it starts `python app.py` itself (idle sessions freed after a few seconds, so memory can be seen to
come back; its log goes to a file, named in the progress lines). Reports errors, p50/p95 latency of Step and
Predict, the server's memory before (one learner's session: the first learner's, no extra seat) / peak / after,
cross-talk: a Step whose step count is not this learner's own count + 1, and orphaned runs: the server's count of
running Plays (its /room endpoint) above the learners playing. Learners Reset and Load a model while playing, as
impatient learners do. Also what was slow: the learners' connects, the /room probe (answered outside the queue:
the server's event loop), the CPU the harness and the server used (a harness process near one core is GIL-bound
and its latencies are its own: --procs spreads the learners over processes), and the errors in the server's log.
Progress lines go to stdout as they happen; every wait has a deadline (the app's start, each request, the whole
run); the last line is one JSON object, or {"error": ...} with a non-zero exit.

--profile FILE samples the started server's Python (its processes too) while the learners act, with py-spy if it
is installed: only while a thread holds the GIL, the time that a process's requests queue behind. The JSON then
says what share of the run the GIL was held and where: the functions (with their callees) with the most samples.

For a GPU room (100 learners, 60 s, inside a few minutes): --sessions 100 --seconds 60 --timeout 30 --deadline 300;
the app's own seats (128 on CUDA, 32 on a CPU; --seats sets PLAYGROUND_MAX_SESSIONS) need not count the harness.
"""

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "assets" / "bench"
EXAMPLES = sorted((ROOT / "assets" / "examples").glob("*.png"))
T0 = time.monotonic()
STATE = {"phase": "starting", "server": None, "log": None}  # for the deadline's message and its clean-up
# gradio_client waits for a request's messages by polling a queue every 50 ms: ~50 ms of every round trip it times
# is its own (an idle app answers /room in ~8 ms, gradio_client took ~60 ms; a browser is told at once). The command
# line polls every 5 ms instead (--client-poll-ms, patch_client); run() from a test leaves gradio_client as it is.
CLIENT_POLL_MS = 50.0
OUT_LOCK = threading.Lock()


def quiet_local_env(env) -> None:
    """No telemetry, no proxy for the local app: a machine without internet must not wait on either (gradio's launch
    GETs its own URL with no timeout; an HTTP(S)_PROXY without NO_PROXY sends that, and every client request, to
    the proxy)."""
    env.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    for name in ("NO_PROXY", "no_proxy"):
        hosts = [h for h in env.get(name, "").split(",") if h]
        env[name] = ",".join(hosts + [h for h in ("127.0.0.1", "localhost") if h not in hosts])


def emit(line: str) -> None:
    """One whole line to stdout at once (learner threads write too), flushed: progress shows as it happens."""
    with OUT_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def log(message: str) -> None:
    emit(f"[{time.monotonic() - T0:6.1f} s] {message}")


def step_of(outputs) -> int:
    return int(outputs[4].split("**Step ")[1].split("**")[0])


def device_of(outputs) -> str:
    """The device from the status line: "**Step 3** · cuda (bf16) · 20 layers, ..." -> "cuda (bf16)"."""
    parts = str(outputs[4]).split(" · ")
    return parts[1] if len(parts) > 1 else "unknown"


def host_cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = "unknown CPU"
    return f"{name}, {os.cpu_count()} cores"


def rss_mb(pid: int) -> float:
    total = 0.0
    for p in [pid, *children(pid)]:
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
        except (OSError, StopIteration):
            pass
    return total


def card_mb(pid: int) -> float | None:
    """GPU memory the server's processes hold (nvidia-smi: the allocators' caches and contexts too), None without
    an NVIDIA card. Several processes' caches add up on one card, where one process's would be reused."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    ours = {pid, *children(pid)}
    return sum(float(m) for p, m in (line.split(",") for line in out.splitlines() if "," in line) if int(p) in ours)


def cpu_seconds(pid: int, with_children: bool = True) -> float:
    """CPU time (user + system) of a process and its children, from /proc."""
    total = 0.0
    for p in [pid, *(children(pid) if with_children else [])]:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def percentile(values, q, digits: int = 1):
    """The q-th percentile, interpolated between the values (never beyond them, however few)."""
    if len(values) < 2:
        return round((values or [0])[0], digits)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], digits)


# --- the client ---------------------------------------------------------------------------------------------------
# gradio_client opens a new httpx client per request, and each builds a TLS context (CA bundle parsed: ~10 ms of
# CPU) even for http://. Sixteen learners in one process spent most of their CPU there, on the 2 cores the server
# needs; a browser keeps its connection. One context, made once, is handed to every request instead.
TLS = ssl.create_default_context()


def patch_client() -> None:
    """gradio_client's reader of a request's messages, polling every CLIENT_POLL_MS instead of every 50 ms."""
    import gradio_client.utils as utils

    global CLIENT_POLL_MS
    f = getattr(utils, "stream_sse_v1plus", None)
    if f is None:  # another gradio_client: its own waits, as shipped
        CLIENT_POLL_MS = 50.0
    if f is None or CLIENT_POLL_MS >= 50 or getattr(f, "patched", False):
        return
    real = time.sleep
    clock = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
    clock.sleep = lambda s: real(min(s, CLIENT_POLL_MS / 1000))
    g = types.FunctionType(f.__code__, {**f.__globals__, "time": clock}, f.__name__, f.__defaults__, f.__closure__)
    g.__kwdefaults__, g.patched = f.__kwdefaults__, True
    utils.stream_sse_v1plus = g


def connect(url: str, timeout: float = 60):
    import httpx
    from gradio_client import Client

    # httpx's timeout for every HTTP call the client makes (config, uploads, /room; the streams get a heartbeat
    # every 15 s): its default of 5 s fails a hundred learners who connect at once to a busy server
    kwargs = {"timeout": httpx.Timeout(max(timeout, 30))}
    return Client(url, verbose=False, ssl_verify=TLS, httpx_kwargs=kwargs)  # httpx takes a context as verify=


def placed(url: str) -> str:
    """Where a browser opening `url` lands: a workshop front (resnet.front) sends each new page to one of its app
    processes, /1/, /2/, ...; an app of one process answers itself."""
    from urllib.parse import urljoin

    import httpx

    answer = httpx.get(url, follow_redirects=False, timeout=30, trust_env=False)
    return urljoin(url, answer.headers["location"]) if answer.is_redirect else url


def processes(url: str) -> list[str]:
    """The app processes behind `url`: a front's, from its /processes; else the app itself."""
    from urllib.parse import urljoin

    import httpx

    try:
        answer = httpx.get(urljoin(url, "processes"), timeout=10, trust_env=False)
        return [urljoin(url, p["path"]) for p in answer.json()] if answer.status_code == 200 else [url]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return [url]


class Monitor:
    """The room at a glance (/room) from every app process, added up; each process's answer is timed."""

    def __init__(self, url: str, timeout: float):
        self.clients, self.timeout = [connect(u, timeout) for u in processes(url)], timeout

    def room(self, times: list | None = None) -> dict:
        total: dict[str, int] = {}
        for client in self.clients:
            t = time.perf_counter()
            room = call(client, api_name="/room", timeout=self.timeout)
            if times is not None:
                times.append((time.perf_counter() - t) * 1000)
            total = {k: total.get(k, 0) + v for k, v in room.items()}
        return total

    def close(self) -> None:
        for client in self.clients:
            client.close()


def call(client, *args, api_name: str, timeout: float):
    """client.predict with a deadline: a request that gets no answer in `timeout` s is cancelled and raises."""
    job = client.submit(*args, api_name=api_name)
    try:
        return job.result(timeout=timeout)
    except TimeoutError:  # concurrent.futures.TimeoutError is TimeoutError
        job.cancel()
        raise TimeoutError(f"{api_name}: no answer within {timeout:.0f} s") from None


def handle_file(path: str):
    from gradio_client import handle_file as handle

    return handle(path)


# --- learners -----------------------------------------------------------------------------------------------------
PLAYING = [0, 0]  # learners of this harness inside a Play action now, and the most since the sampler last looked
PLAYING_LOCK = threading.Lock()
IN_WORKER = [False]  # in a --worker process: Play counts, readiness and results go to the parent as lines


def playing(delta: int) -> None:
    if IN_WORKER[0]:
        emit(f"PLAY {delta:+d}")  # the parent counts the Plays of all its processes
        return
    with PLAYING_LOCK:
        PLAYING[0] += delta
        PLAYING[1] = max(PLAYING[1], PLAYING[0])


TRACES: list[str] = []  # the first few failures' tracebacks, printed: where in the client or the server it failed


def note_trace(action: str) -> None:
    if len(TRACES) < 3:
        TRACES.append(f"{action}: " + "".join(traceback.format_exc(limit=-6)))
        emit(f"traceback of an early error ({action}):\n{TRACES[-1]}")


class Learner(threading.Thread):
    def __init__(
        self, url: str, seconds: float, seed: int, timeout: float = 60, think: float = 0.0, idle_seconds: float = 1e9
    ):
        super().__init__(daemon=True)
        self.url, self.seconds, self.rng, self.timeout, self.think = url, seconds, random.Random(seed), timeout, think
        self.step_ms, self.predict_ms, self.errors, self.cross_talk, self.swept = [], [], [], 0, 0
        self.idle_seconds = idle_seconds  # the app's idle limit: a longer gap between touches may free the session
        self.actions, self.connect_s, self.device, self.client = 0, None, None, None
        self.previous = "start"  # the action before, to explain a cross-talk count
        self.ready = threading.Event()  # set up (or failed to): the run's baseline waits for the first learner

    def reset_args(self) -> tuple:
        return "shapes", "notebook (0.6M parameters)", self.rng.randrange(100), "adam", 0.001, 32

    def call(self, *args, api_name: str):
        return call(self.client, *args, api_name=api_name, timeout=self.timeout)

    def timed(self, bucket, *args, api_name: str):
        t = time.perf_counter()
        out = self.call(*args, api_name=api_name)
        bucket.append((time.perf_counter() - t) * 1000)
        return out

    def run(self):
        try:
            self.learn()
        except BaseException as e:  # noqa: BLE001 -- a harness bug must show in the report, not end a thread silently
            self.errors.append(f"harness: {type(e).__name__}: {e}")
        finally:
            self.ready.set()
            if self.client is not None:
                self.client.close()  # its heartbeat ends: the server sees the page go (its run and seat, later)

    def set_up(self) -> int:
        t = time.perf_counter()
        self.client = connect(placed(self.url), self.timeout)
        self.connect_s = time.perf_counter() - t
        self.call(api_name="/load")
        out = self.call(*self.reset_args(), api_name="/reset")
        self.device = device_of(out)
        self.model_file = self.call(api_name="/download_model")  # to Load during Play
        return step_of(out)

    def learn(self):
        try:
            count = self.set_up()
        except Exception as e:  # noqa: BLE001 -- counted and reported, like every other failure
            self.errors.append(f"start: {type(e).__name__}: {e}")
            note_trace("start")
            return
        finally:
            if IN_WORKER[0]:
                emit(f"READY {self.connect_s}")
        self.ready.set()
        end = time.monotonic() + self.seconds
        # when the server last touched this learner's session at the latest (the start of their last request: a
        # Predict too, which keeps a seat in use), and whether a gap since the last Step was longer than the app's
        # idle limit: the session may have been freed, and a fresh one made
        touched, lapsed = time.monotonic(), False
        while time.monotonic() < end:
            action = self.rng.choice(
                ["step", "step", "predict", "predict", "play", "shortcut", "lr", "reset_in_play", "load_in_play"]
            )
            asked, stepped = time.monotonic(), False
            try:
                if action == "step":
                    now = step_of(self.timed(self.step_ms, api_name="/step"))
                    if now == 1 and count > 0 and (lapsed or time.monotonic() - touched > self.idle_seconds):
                        self.swept += 1  # not another's step: this learner's session was freed as idle
                    elif now not in (count + 1, count):  # +0: the step was rejected
                        self.cross_talk += 1
                        emit(f"cross-talk? expected step {count + 1}, got {now} (after {self.previous})")
                    count, stepped = now, True
                elif action == "predict":
                    image = self.rng.choice(EXAMPLES)
                    self.timed(self.predict_ms, handle_file(str(image)), api_name="/predict_image")
                elif action in ("play", "reset_in_play", "load_in_play"):
                    count = self.play(action)
                elif action == "shortcut":
                    self.call(self.rng.random() < 0.5, api_name="/all_shortcuts")
                else:
                    self.call("adam", self.rng.choice([1e-3, 5e-4, 2e-3]), 32, api_name="/configure")
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"{action}: {type(e).__name__}: {e}")
                note_trace(action)
            lapsed = not stepped and (lapsed or time.monotonic() - touched > self.idle_seconds)
            touched = asked
            self.previous = action
            self.actions += 1
            if self.think:
                time.sleep(self.rng.uniform(0, 2 * self.think))

    def play(self, action: str) -> int:
        """Play, and once two chart updates came, end it by Pause, Reset or Load: the step count after it."""
        playing(+1)
        ended = False
        try:
            job = self.client.submit(api_name="/play")
            until = time.monotonic() + self.timeout
            # not `for out in job`: a Job's iterator sleeps 1 ms at a time holding the lock that the thread
            # delivering the updates needs, and it would look at no clock until an update came
            while len(job.outputs()) < 2 and not job.done():
                if time.monotonic() > until:
                    raise TimeoutError(f"/play: {len(job.outputs())} of 2 chart updates within {self.timeout:.0f} s")
                time.sleep(0.05)
            if job.done() and not job.cancelled() and job.exception() is not None:
                raise job.exception()
            if action == "play":  # Pause: no turn runs after it returns, and it shows the last one
                out = self.call(api_name="/pause")
            elif action == "reset_in_play":  # the old run must end, not train on behind the new one
                out = self.call(*self.reset_args(), api_name="/reset")
            else:
                out = self.call(handle_file(self.model_file), "", None, api_name="/load_model")
            ended = True
            return step_of(out)
        finally:
            if not ended:  # end the run this learner may have left going, so it is not counted as an orphan
                try:
                    self.call(api_name="/pause")
                except Exception as e:  # noqa: BLE001
                    self.errors.append(f"pause after a failed {action}: {type(e).__name__}: {e}")
            playing(-1)

    def numbers(self) -> dict:
        return {
            "step_ms": self.step_ms,
            "predict_ms": self.predict_ms,
            "errors": self.errors,
            "cross_talk": self.cross_talk,
            "swept": self.swept,
            "actions": self.actions,
            "connect_s": self.connect_s,
            "device": self.device,
            "stuck": self.is_alive(),
        }


def worker(url: str, seconds: float, seeds: list[int], timeout: float, think: float, idle_seconds: float) -> None:
    """--worker: some learners in a process of their own; Play counts and readiness as lines while they go, then
    their numbers as one RESULT line. Ends within its own deadline, whatever the learners do."""
    IN_WORKER[0] = True
    began, cpu = time.monotonic(), time.process_time()
    learners = [Learner(url, seconds, s, timeout, think, idle_seconds) for s in seeds]
    for learner in learners:
        learner.start()
    hard = time.monotonic() + seconds + 3 * timeout + 20  # set up, learn, a last action (its parent waits 10 s more)
    for learner in learners:
        learner.join(max(0.0, hard - time.monotonic()))
    for learner in learners:
        if learner.is_alive():
            learner.errors.append("harness: the learner was still waiting when the run's deadline came")
    cores = (time.process_time() - cpu) / max(time.monotonic() - began, 1e-9)
    emit("RESULT " + json.dumps({"learners": [learner.numbers() for learner in learners], "cpu_cores": cores}))


class Worker:
    """The parent's end of a --worker process: counts its Plays and ready learners, keeps its RESULT."""

    def __init__(
        self, index: int, url: str, seconds: float, seeds: list[int], timeout: float, think: float, idle_seconds: float
    ):
        self.index, self.seeds, self.ready, self.connects, self.result = index, seeds, 0, [], None
        argv = [sys.executable, "-u", str(Path(__file__).resolve()), "--worker", "--url", url]
        argv += ["--seconds", str(seconds), "--timeout", str(timeout), "--think", str(think)]
        argv += ["--idle-seconds", str(idle_seconds)]
        argv += ["--seeds", ",".join(map(str, seeds)), "--client-poll-ms", str(CLIENT_POLL_MS)]
        env = dict(os.environ)
        quiet_local_env(env)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("PLAY "):
                playing(int(line[5:]))
            elif line.startswith("READY "):
                self.ready += 1
                if line[6:] != "None":
                    self.connects.append(float(line[6:]))
            elif line.startswith("RESULT "):
                self.result = json.loads(line[7:])
            else:
                emit(f"  [worker {self.index}] {line}")

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def numbers(self) -> list[dict]:
        if self.result is not None:
            return self.result["learners"]
        self.proc.kill()
        why = f"harness: worker {self.index} ended without its numbers (exit code {self.proc.poll()})"
        return [{**Learner("", 0, s).numbers(), "errors": [why], "stuck": True} for s in self.seeds]


# --- the app ------------------------------------------------------------------------------------------------------
def free_port(span: int = 9) -> int:
    """A port with the `span - 1` after it free too (a front's processes listen on port + 1...): below the kernel's
    range for outgoing connections, so the harness's own thousands of connections cannot take one of them."""
    for _ in range(200):
        port = random.Random().randrange(20000, 32000 - span)  # not the learners' seeded sequence
        try:
            with contextlib.ExitStack() as held:
                for p in range(port, port + span):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no free block of ports between 20000 and 32000")


def log_tail(path: str | None, lines: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except (OSError, TypeError):
        return ""


def log_count(path: str | None, text: str) -> int | None:
    try:
        with open(path, errors="replace") as f:
            return sum(text in line for line in f)
    except (OSError, TypeError):
        return None


def log_errors(path: str | None) -> dict:
    """The server log's tracebacks, and its distinct error lines (first 5): the server's side of an error."""
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except (OSError, TypeError):
        return {"tracebacks": None, "lines": []}
    said = [
        line[:200]
        for line in lines
        if line[:1] not in (" ", "\t", "") and ("Error" in line or "ERROR" in line or "Exception" in line)
    ]
    return {"tracebacks": sum(line.startswith("Traceback") for line in lines), "lines": list(dict.fromkeys(said))[:5]}


def start_server(
    port: int,
    idle_seconds: float,
    play_seconds: float = 30,
    seats: int | None = None,
    timeout: float = 120,
    app_processes: int | str | None = None,
) -> subprocess.Popen:
    """`python app.py` on `port`, once it answers its config; its output goes to a log file. Fails at once, with
    the log's tail, if the app exits, and after `timeout` s if it never answers."""
    env = {
        **os.environ,
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "PLAYGROUND_IDLE_SECONDS": str(idle_seconds),
        "PLAYGROUND_PLAY_SECONDS": str(play_seconds),
        "PYTHONUNBUFFERED": "1",  # its log shows what it did up to a crash or a hang
        "PYTHONFAULTHANDLER": "1",  # and, on SIGABRT, where each thread stood (dump_stacks)
    }
    quiet_local_env(env)
    env.setdefault("HF_HUB_OFFLINE", "1")  # the load test never needs the Hub: a call to it fails at once, not later
    if seats is not None:
        env["PLAYGROUND_MAX_SESSIONS"] = str(seats)
    if app_processes is not None:
        env["PLAYGROUND_PROCESSES"] = str(app_processes)
    path = os.path.join(tempfile.gettempdir(), f"resnet-load-test-{port}.log")
    log(f"starting the app on port {port} (log: {path}), waiting up to {timeout:.0f} s")
    with open(path, "w") as out:
        server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    STATE.update(server=server, log=path)
    import httpx

    started, said = time.monotonic(), time.monotonic()
    while time.monotonic() - started < timeout:
        if server.poll() is not None:
            tail = log_tail(path)
            raise RuntimeError(f"the app exited with code {server.returncode} while starting; its log:\n{tail}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/config", timeout=5, trust_env=False).status_code == 200:
                front = httpx.get(f"http://127.0.0.1:{port}/processes", timeout=5, trust_env=False)
                if front.status_code != 200 or all(p["ready"] for p in front.json()):  # a front: all its processes
                    log(f"the app answers after {time.monotonic() - started:.1f} s")
                    return server
        except httpx.HTTPError:
            pass
        if time.monotonic() - said >= 10:
            log(f"still waiting for the app ({time.monotonic() - started:.0f} s)")
            said = time.monotonic()
        time.sleep(0.25)
    dump_stacks(server)
    stop_server(server)
    tail = log_tail(path)
    raise RuntimeError(f"the app did not answer within {timeout:.0f} s; its log (each stack: {path}):\n{tail}")


class GilProfile:
    """py-spy sampling a server's processes, counting only samples where a thread holds the GIL (--gil), without
    pausing them (--nonblocking): where its Python time goes under load. Without py-spy, says so."""

    def __init__(self, path: str, pid: int, seconds: float, rate: int = 100):
        self.path, self.rate, self.proc, self.began, self.note = Path(path), rate, None, time.monotonic(), None
        spy = shutil.which("py-spy")
        if spy is None:
            self.note = "py-spy is not installed"
            return
        argv = [spy, "record", "--gil", "--nonblocking", "--subprocesses", "-r", str(rate), "-d", str(int(seconds)),
                "-f", "raw", "-o", str(self.path), "-p", str(pid)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def result(self, top: int = 40) -> dict:
        """Stop sampling; per process, the share of the run with its GIL held; the top functions' shares."""
        if self.proc is None:
            return {"note": self.note}
        wall = time.monotonic() - self.began
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.send_signal(signal.SIGINT)  # py-spy writes what it has on ^C
            self.proc.wait(15)
        if self.proc.poll() is None:
            self.proc.kill()
        if not self.path.exists():
            return {"note": f"py-spy wrote nothing: {(self.proc.stderr.read() or '')[-300:]}"}
        return {"wall_s": round(wall, 1), **gil_shares(self.path, wall * self.rate, top)}


# frames every stack of a thread or of the event loop has: no information about where the time went
PLUMBING = ("[threading.py]", "Runner.run [", "asyncio_run [", "Server.run [uvicorn", "BaseEventLoop.run_")


def gil_shares(raw: Path, possible: float, top: int = 40) -> dict:
    """py-spy's raw output (a stack per line, root first: `process PID:"command"`, a child's under its parent's,
    then frames `function (file:line)`, joined by ';', then a count) -> per process, the share of `possible`
    samples with its GIL held; per function (file without its line), its share of the held samples with callees
    ("top") and alone ("self")."""
    per_process, inclusive, alone, held = {}, {}, {}, 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        held += n
        owner = None
        while frames and frames[0].startswith("process "):  # a front's processes come under the front's
            owner = frames.pop(0).split(":")[0]
        if owner:
            per_process[owner] = per_process.get(owner, 0) + n
        names = []
        for frame in frames:
            function, _, where = frame.partition(" (")
            path = where.rsplit(":", 1)[0].split("site-packages/")[-1]
            names.append(f"{function} [{path}]")
        for name in set(names):
            if not any(p in name for p in PLUMBING):
                inclusive[name] = inclusive.get(name, 0) + n
        if names:
            alone[names[-1]] = alone.get(names[-1], 0) + n

    def ranked(counts: dict, k: int) -> list:
        return [[name, round(c / held, 3)] for name, c in sorted(counts.items(), key=lambda kv: -kv[1])[:k]]

    shares = sorted((round(c / possible, 3) for c in per_process.values()), reverse=True) if possible else []
    return {"gil_held_share_per_process": shares, "samples": held, "top": ranked(inclusive, top),
            "self": ranked(alone, top // 2)}  # fmt: skip


def dump_stacks(server: subprocess.Popen) -> None:
    """Where a hung app stands: SIGABRT makes each of its processes (a front's too, children first) write every
    thread's Python stack to the log (PYTHONFAULTHANDLER, set at its start), then end."""
    for pid in [*children(server.pid), server.pid]:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGABRT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(timeout=5)


def stop_server(server: subprocess.Popen | None) -> None:
    if server is None or server.poll() is not None:
        return
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=15)


def auto_procs(sessions: int) -> int:
    """Harness processes for a room: ~10 learners each (a process does ~6 ms of CPU per request, under its one
    GIL), on the cores the server leaves; one where there are few cores or learners."""
    return max(1, min(math.ceil(sessions / 10), (os.cpu_count() or 2) - 2))


# --- a room -------------------------------------------------------------------------------------------------------
def run(
    sessions: int,
    seconds: float,
    url: str | None = None,
    idle_seconds: float = 8,
    seats: int | None = None,
    timeout: float = 60,
    think: float = 0.0,
    start_timeout: float = 120,
    procs: int = 1,
    app_processes: int | str | None = None,
    profile: str | None = None,
) -> dict:
    """`sessions` learners for `seconds` s each (from their own start), against `url` or an app started here with
    `seats` seats (None: the app's default). Every request has `timeout` s. The first learner runs here (its
    session is the memory baseline); the others in this process, or spread over `procs` worker processes.
    `profile`: a file for the started server's GIL profile (GilProfile) while the learners act."""
    began = time.monotonic()
    server, phases = None, {}
    PLAYING[:] = [0, 0]
    if url is None:
        port = free_port()
        server = start_server(port, idle_seconds, seats=seats, timeout=start_timeout, app_processes=app_processes)
        url = f"http://127.0.0.1:{port}/"
    phases["start_s"] = round(time.monotonic() - began, 1)
    pid = server.pid if server else None
    first = Learner(url, seconds, 0, timeout, think, idle_seconds)
    procs = max(1, min(procs, sessions - 1)) if sessions > 1 else 1
    rest = list(range(1, sessions))
    here = rest if procs == 1 else []  # the other learners: threads of this process, or of workers
    local = [first] + [Learner(url, seconds, i, timeout, think, idle_seconds) for i in here]
    workers: list[Worker] = []
    room_ms, all_ready, monitor_errors = [], None, []
    try:
        STATE["phase"] = "connecting the monitor"
        monitor = Monitor(url, timeout)
        floor = []
        room_before = monitor.room(floor)
        floor_ms = min(floor)  # an idle server's quickest answer, as this client times it
        free = room_before["max_seats"] - room_before["seats"]
        log(f"room: {room_before['seats']} of {room_before['max_seats']} seats taken, {room_before['running']} runs")
        if sessions > free:
            log(f"warning: {sessions} learners for {free} free seats: expect 'seats are taken' errors (--seats)")
        STATE["phase"] = "the first learner's start (the memory baseline)"
        ramp = time.monotonic()
        first.start()  # its session is the baseline: one learner's memory, and no seat of the harness's own
        if not first.ready.wait(timeout * 2):
            raise RuntimeError(f"the first learner was not set up within {timeout * 2:.0f} s")
        rss_before = rss_mb(pid) if pid else 0.0
        card_before = card_mb(pid) if pid else None
        cpu_server, cpu_self, wall = cpu_seconds(pid) if pid else 0.0, time.process_time(), time.monotonic()
        cpu_front = cpu_seconds(pid, with_children=False) if pid else 0.0  # the started process alone (a front)
        spy = GilProfile(profile, pid, seconds + 2 * timeout) if profile and pid else None
        STATE["phase"] = f"{sessions} learners"
        where = "in this process" if procs == 1 else f"in {procs} worker processes"
        log(f"first learner ready ({first.device}); server memory {rss_before:.0f} MB; {sessions - 1} more {where}")
        for learner in local[1:]:
            learner.start()
        for i in range(procs if procs > 1 else 0):
            workers.append(Worker(i, url, seconds, rest[i::procs], timeout, think, idle_seconds))
        peak, orphans, room_peak, said = rss_before, 0, dict(room_before), time.monotonic()
        card_peak, card_asked = card_before, time.monotonic()
        # a learner sets up (a few requests), learns for `seconds`, and its last action takes a timeout at most (a
        # Play that fails: up to 3); one still going after that is reported as stuck
        hard = time.monotonic() + seconds + 3 * timeout + 30

        def going():
            return sum(x.is_alive() for x in local) + sum(w.is_alive() for w in workers)

        def ready():
            return sum(x.ready.is_set() for x in local) + sum(w.ready for w in workers)

        while going() and time.monotonic() < hard:
            if server is not None and server.poll() is not None:
                raise RuntimeError(f"the app exited with code {server.returncode}; its log:\n{log_tail(STATE['log'])}")
            if all_ready is None and ready() >= sessions:
                all_ready = time.monotonic() - ramp
                connects = connect_times(local, workers)
                log(f"all {sessions} learners set up after {all_ready:.1f} s (connect p50/max "
                    f"{percentile(connects, 50, 2):.2f}/{max(connects, default=0):.2f} s)")  # fmt: skip
            peak = max(peak, rss_mb(pid) if pid else 0.0)
            if card_peak is not None and time.monotonic() - card_asked >= 2:  # nvidia-smi takes ~0.1 s
                card_peak, card_asked = max(card_peak, card_mb(pid) or 0.0), time.monotonic()
            with PLAYING_LOCK:
                PLAYING[1] = PLAYING[0]  # the most learners in a Play while /room is asked (not the lock held)
            try:
                room = monitor.room(room_ms)
            except Exception as e:  # noqa: BLE001 -- the probe failing is a finding, not the end of the run
                monitor_errors.append(f"/room: {type(e).__name__}: {e}")
                log(f"the /room probe failed: {monitor_errors[-1]}")
                time.sleep(0.5)
                continue
            if workers:
                time.sleep(0.02)  # a worker's "Play started" line, written before its request, has been read
            with PLAYING_LOCK:  # a run ends on the server before the Pause, Reset or Load that ends it returns
                in_play = PLAYING[1]
            orphans = max(orphans, room["running"] - in_play)
            room_peak = {k: max(room_peak[k], room[k]) for k in room_peak}
            if time.monotonic() - said >= 10:
                said = time.monotonic()
                steps = [t for x in local for t in x.step_ms]
                predictions = [t for x in local for t in x.predict_ms]
                errors = sum(len(x.errors) for x in local)
                so_far = "" if workers else f"{len(steps)} steps (p95 {percentile(steps, 95)} ms), "
                so_far += "" if workers else f"{len(predictions)} predictions (p95 {percentile(predictions, 95)} ms), "
                so_far += "" if workers else f"{errors} errors; "
                log(f"{going()} {'learners' if not workers else 'learners/processes'} going, {ready()} set up; "
                    f"{so_far}room {room}, /room {room_ms[-1]:.0f} ms; server {peak:.0f} MB at most")  # fmt: skip
            time.sleep(0.5)
        phases["run_s"] = round(time.monotonic() - wall, 1)
        gil = spy.result() if spy else None
        if going():
            log(f"the run's deadline came with {going()} learners or processes still waiting")
        server_cores = round((cpu_seconds(pid) - cpu_server) / (time.monotonic() - wall), 2) if pid else None
        front_cores = round((cpu_seconds(pid, False) - cpu_front) / (time.monotonic() - wall), 2) if pid else None
        own_cores = (time.process_time() - cpu_self) / (time.monotonic() - wall)
        numbers = [x.numbers() for x in local] + [n for w in workers for n in w.numbers()]
        worker_cores = [w.result["cpu_cores"] for w in workers if w.result is not None]
        room_end = monitor.room()
        STATE["phase"] = "the learners' sessions being freed"
        rss_after, room_after, swept, card_after = 0.0, None, time.monotonic(), None
        if pid:
            log(f"learners done; waiting {idle_seconds + 2:.0f} s for their sessions to be freed")
            time.sleep(idle_seconds + 2)
            for process in processes(url):  # a visit sweeps the idle sessions out (of each process)
                visitor = connect(process, timeout)
                call(visitor, api_name="/load", timeout=timeout)
                visitor.close()
            time.sleep(1)
            rss_after = rss_mb(pid)
            card_after = card_mb(pid)
            room_after = monitor.room()
        phases["sweep_s"] = round(time.monotonic() - swept, 1)
        monitor.close()
    finally:
        STATE["phase"] = "stopping the app"
        # the run's errors, not the stop's (a front cancels the streams still open after 5 s, and logs each)
        server_errors = log_errors(STATE["log"]) if server else None
        stop_server(server)
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
    phases["total_s"] = round(time.monotonic() - began, 1)
    step_ms = [t for n in numbers for t in n["step_ms"]]
    predict_ms = [t for n in numbers for t in n["predict_ms"]]
    errors = [e for n in numbers for e in n["errors"]]
    stuck = sum(n["stuck"] for n in numbers)
    by_kind: dict[str, int] = {}
    for e in errors:
        kind = ": ".join(e.split(": ")[:2])  # the action and the exception's type
        by_kind[kind] = by_kind.get(kind, 0) + 1
    for e in errors[:10]:
        emit(f"error: {e[:300]}")
    connects = [n["connect_s"] for n in numbers if n["connect_s"] is not None]
    result = {
        "sessions": sessions,
        "seconds": seconds,
        "device": next((n["device"] for n in numbers if n["device"]), "unknown"),
        "host": host_cpu(),
        "errors": len(errors),
        "error_messages": [e[:300] for e in errors[:5]],
        "errors_by_kind": by_kind,
        "monitor_errors": monitor_errors[:5],  # the harness's /room probe (not counted in errors)
        "server_log_errors": server_errors,
        "actions": sum(n["actions"] for n in numbers),
        "steps": len(step_ms),
        "predictions": len(predict_ms),
        "p50_step_ms": percentile(step_ms, 50),
        "p95_step_ms": percentile(step_ms, 95),
        "p50_predict_ms": percentile(predict_ms, 50),
        "p95_predict_ms": percentile(predict_ms, 95),
        "cross_talk": sum(n["cross_talk"] for n in numbers),
        # Steps that found a fresh session after a gap over the app's idle limit (its queue's wait included)
        "swept": sum(n.get("swept", 0) for n in numbers),
        "app_processes": len(monitor.clients),
        "orphan_runs": orphans,  # most runs the server had beyond the learners then playing
        "runs_after": room_end["running"],  # runs still going once every learner stopped
        "rss_before_mb": round(rss_before),  # the server with one learner's session (the first learner's)
        "rss_peak_mb": round(peak),
        "rss_after_mb": round(rss_after),  # once the learners' sessions were freed (idle)
        "rss_after_over_before": round(rss_after / rss_before, 3) if rss_before else None,
        # the card's memory in the server's processes (None without an NVIDIA card), and the learners whose step
        # could not be captured as a CUDA graph (out of the card's memory, say) and runs eagerly, from its log
        "card_before_mb": card_before and round(card_before),
        "card_peak_mb": card_peak and round(card_peak),
        "card_after_mb": card_after and round(card_after),
        "eager_fallbacks": log_count(STATE["log"], "steps eagerly from now on") if server else None,
        "room_before": room_before,
        "room_peak": room_peak,  # the most seats taken and runs going at once
        "room_after": room_after,
        "room_p50_ms": percentile(room_ms, 50),  # /room is answered outside the queue: the event loop's delay
        "room_p95_ms": percentile(room_ms, 95),
        "client_floor_ms": round(floor_ms, 1),  # /room of the idle app, as timed here: the client's own share
        "client_poll_ms": CLIENT_POLL_MS,
        "connect_p50_s": percentile(connects, 50, 2),
        "connect_max_s": round(max(connects, default=0), 2),
        "all_set_up_s": round(all_ready, 1) if all_ready is not None else None,
        "procs": procs,
        # CPU cores the harness used, in all, and in its busiest process: near 1, that process's GIL was the
        # bottleneck and its latencies are partly its own (more --procs)
        "harness_cpu_cores": round(own_cores + sum(worker_cores), 2),
        "harness_busiest_process_cores": round(max([own_cores, *worker_cores]), 2),
        "server_cpu_cores": server_cores,
        "started_process_cpu_cores": front_cores,  # of those, the process started here (with a front: the front)
        "stuck_learners": stuck,
        "phases": phases,
        "gil_profile": gil,  # --profile: the share of the run a server process's GIL was held, and by what
    }
    card = "" if card_before is None else f"card {card_before:.0f} -> {card_peak:.0f} -> {card_after or 0:.0f} MB, "
    emit(
        f"{sessions} learners for {seconds:.0f} s on {result['device']} ({result['host']}): {len(step_ms)} steps, "
        f"{len(predict_ms)} predictions, {len(errors)} errors; step p50/p95 {result['p50_step_ms']}/"
        f"{result['p95_step_ms']} ms, predict p50/p95 {result['p50_predict_ms']}/{result['p95_predict_ms']} ms; "
        f"memory {result['rss_before_mb']} -> peak {result['rss_peak_mb']} -> after {result['rss_after_mb']} MB; "
        f"{card}eager fallbacks {result['eager_fallbacks']}; orphaned runs {orphans}, runs after "
        f"{room_end['running']}, cross-talk {result['cross_talk']}; /room p95 "
        f"{result['room_p95_ms']} ms; CPU cores used: harness {result['harness_cpu_cores']} (busiest process "
        f"{result['harness_busiest_process_cores']}), server {server_cores}"
    )
    return result


def connect_times(local: list[Learner], workers: list[Worker]) -> list[float]:
    return [x.connect_s for x in local if x.connect_s is not None] + [c for w in workers for c in w.connects]


# --- one learner's speed ------------------------------------------------------------------------------------------
def app_speed(
    seconds: float, batch: int = 64, timeout: float = 60, start_timeout: float = 120, url: str | None = None
) -> dict:
    """One learner, the app to itself (for `python -m resnet.bench --app`): images/s while Play streams the charts
    at their normal rate, and the Step button's round trip against the step's own time (from the status line).
    Against `url`, or an app started here (whose Play does not pause by itself before the measurement is over)."""
    server = None
    if url is None:
        port = free_port()
        server = start_server(port, idle_seconds=600, play_seconds=seconds + 60, timeout=start_timeout)
        url = f"http://127.0.0.1:{port}/"
    try:
        STATE["phase"] = "app speed: warm-up"
        client = connect(url, timeout)
        call(client, api_name="/load", timeout=timeout)
        reset = ("shapes", "notebook (0.6M parameters)", 0, "adam", 0.001, batch)
        device = device_of(call(client, *reset, api_name="/reset", timeout=timeout))
        for _ in range(3):
            call(client, api_name="/step", timeout=timeout)  # warm-up (a GPU captures its step here)
        trips = []
        for _ in range(10):
            t = time.perf_counter()
            call(client, api_name="/step", timeout=timeout)
            trips.append((time.perf_counter() - t) * 1000)
        log(f"on {device}: Step round trip {statistics.median(trips):.1f} ms; now Play for {seconds:.0f} s")
        STATE["phase"] = "app speed: Play"
        first = step_of(call(client, api_name="/load", timeout=timeout))
        # poll the outputs, not `for out in job`: a Job's iterator sleeps 1 ms at a time holding the lock that the
        # thread delivering the updates needs, and it looks at the clock only when an update has come
        job = client.submit(api_name="/play")
        t = time.perf_counter()
        updates, last, last_at, said = 0, first, t, t
        while time.perf_counter() - t < seconds and not job.done():
            outs = job.outputs()
            if len(outs) > updates:
                updates, last, last_at = len(outs), step_of(outs[-1]), time.perf_counter()
            elif time.perf_counter() - last_at > timeout:
                raise TimeoutError(f"/play: no chart update for {timeout:.0f} s ({updates} so far)")
            if time.perf_counter() - said >= 10:
                said = time.perf_counter()
                log(f"Play: {updates} updates, step {last}")
            time.sleep(0.02)
        if job.done() and not job.cancelled() and job.exception() is not None:
            raise RuntimeError(f"/play failed: {job.exception()}")
        call(client, api_name="/pause", timeout=timeout)
        job.cancel()
        client.close()
    finally:
        STATE["phase"] = "stopping the app"
        stop_server(server)
    elapsed = last_at - t
    if updates == 0 or elapsed <= 0:
        raise RuntimeError(f"/play sent no chart update in {seconds:.0f} s")
    return {
        "device": device,
        "host": host_cpu(),
        "seconds": seconds,
        "batch": batch,
        "app_img_s": round((last - first) * batch / elapsed, 1),
        "updates_per_s": round(updates / elapsed, 2),
        "step_roundtrip_ms": round(statistics.median(trips), 1),
    }


# --- the command line ---------------------------------------------------------------------------------------------
def write(result: dict, out: str | None) -> None:
    """The JSON to `out`: a bare file name lands in assets/bench/."""
    if out:
        path = Path(out) if Path(out).name != out else BENCH_DIR / out
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        log(f"written to {path}")


def on_deadline(seconds: float) -> None:
    """The whole run's deadline passed: say where it was, stop the app, and exit non-zero at once."""
    message = f"the load test did not finish within {seconds:.0f} s (it was at: {STATE['phase']})"
    print(f"error: {message}", file=sys.stderr, flush=True)
    emit(json.dumps({"error": message}))
    try:
        stop_server(STATE["server"])
    finally:
        os._exit(3)


def main(argv=None):
    global CLIENT_POLL_MS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--url", default=None, help="an app already running; default: start one")
    p.add_argument("--app-speed", action="store_true", help="one learner's training speed through the app")
    p.add_argument("--idle-seconds", type=float, default=8, help="the app's idle limit: sessions freed after (8)")
    p.add_argument("--seats", type=int, default=None, help="PLAYGROUND_MAX_SESSIONS of the app started here")
    p.add_argument("--app-processes", default=None, help="PLAYGROUND_PROCESSES of the app started here (n, auto)")
    p.add_argument("--procs", type=int, default=None, help="harness processes (default: ~10 learners each)")
    p.add_argument("--think", type=float, default=0.0, help="mean pause between a learner's actions, s (0)")
    p.add_argument("--timeout", type=float, default=60, help="the most one request may take, s (60)")
    p.add_argument("--start-timeout", type=float, default=120, help="the most the app may take to start, s (120)")
    p.add_argument("--deadline", type=float, default=None, help="the most the whole run may take, s (from the rest)")
    p.add_argument("--client-poll-ms", type=float, default=5.0, help="gradio_client's polling, ms (5; 50: as shipped)")
    p.add_argument("--out", default=None, help="also write the JSON there (a bare name: under assets/bench/)")
    p.add_argument("--profile", default=None, help="py-spy's raw GIL samples of the started app go there")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # learners for a parent run
    p.add_argument("--seeds", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show as they come, even through a pipe
    quiet_local_env(os.environ)
    CLIENT_POLL_MS = args.client_poll_ms
    patch_client()
    if args.worker:
        seeds = [int(s) for s in args.seeds.split(",") if s]
        worker(args.url, args.seconds, seeds, args.timeout, args.think, args.idle_seconds)
        os._exit(0)
    # the app's start, the first learner's (2 timeouts), the run's own limit, the sweep, and a margin
    deadline = args.deadline or args.start_timeout + args.seconds + 5 * args.timeout + args.idle_seconds + 110
    watchdog = threading.Timer(deadline, on_deadline, (deadline,))
    watchdog.daemon = True
    watchdog.start()
    log(f"load test on {host_cpu()}; deadline {deadline:.0f} s")
    try:
        if args.app_speed:
            result = app_speed(args.seconds, timeout=args.timeout, start_timeout=args.start_timeout, url=args.url)
        else:
            result = run(
                args.sessions,
                args.seconds,
                args.url,
                idle_seconds=args.idle_seconds,
                seats=args.seats,
                timeout=args.timeout,
                think=args.think,
                start_timeout=args.start_timeout,
                procs=args.procs if args.procs is not None else auto_procs(args.sessions),
                app_processes=args.app_processes,
                profile=args.profile,
            )
        write(result, args.out)
        code = 0
    except Exception as e:  # noqa: BLE001 -- any failure: a clear message and a non-zero exit, never a hang
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        result, code = {"error": f"{type(e).__name__}: {e}"}, 1
    except KeyboardInterrupt:
        result, code = {"error": "interrupted"}, 130
    finally:
        stop_server(STATE["server"])
    emit(json.dumps(result))
    # exit now: a client thread still reading a stream (an app at --url goes on) must not hold the interpreter
    os._exit(code)


if __name__ == "__main__":
    main()
