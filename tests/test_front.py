"""The workshop front (resnet.front) before two real app processes: pages go to the processes in turn and a browser
comes back to its own; each learner's requests (uploads and streams too) reach their process and no other; the room's
seats are shared out, not multiplied; bad paths and oversized bodies are refused; the processes end with the front.
What the front makes of hostile requests is tested before stand-ins for its processes (plain HTTP servers)."""

import asyncio
import contextlib
import http.server
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

import httpx
import pytest
import torch
import uvicorn
from gradio_client import handle_file

from resnet import front
from tests import load_test


class StandIn(http.server.BaseHTTPRequestHandler):
    """An app process, or a service next to it: answers with the path it was asked and keeps each request's path
    and headers; /broken starts an event stream and dies in the middle of it."""

    def do_GET(self):
        self.server.seen.append((self.path, self.headers))
        if self.path == "/broken":
            self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n")
            self.wfile.write(b"\r\n9\r\ndata: 1\n\n\r\n")
            self.close_connection = True  # the socket closes with the message half sent
            return
        body = self.path.encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def stand_ins():
    """Two servers on free local ports: the front's one process, and a service the front must never reach."""
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandIn) for _ in range(2)]
    for server in servers:
        server.seen = []
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


@contextlib.asynccontextmanager
async def front_before(process: http.server.HTTPServer, client=("203.0.113.7", 50000)):
    """A front whose one process is `process`, asked in-process as by a learner at the address `client`."""
    f = front.Front("app.py", processes=1, port=process.server_address[1] - 1)  # process 1 on port + 1
    f.start = lambda k: None  # the stand-in already serves
    transport = httpx.ASGITransport(f.app, client=client)
    async with f._lifespan(f.app), httpx.AsyncClient(transport=transport, base_url="http://front") as asks:
        yield asks


def ask(process, *requests, **kwargs) -> list[httpx.Response]:
    """`requests`: (method, path, options) for httpx, asked of a front before `process` one after the other."""

    async def asked():
        async with front_before(process, **kwargs) as asks:
            return [await asks.request(method, path, **options) for method, path, options in requests]

    return asyncio.run(asked())


@contextlib.contextmanager
def served(process: http.server.HTTPServer):
    """A front before `process` served by uvicorn on a free port, as `front.serve` does: its port."""
    f = front.Front("app.py", processes=1, port=process.server_address[1] - 1)
    f.start = lambda k: None
    server = uvicorn.Server(uvicorn.Config(f.app, host="127.0.0.1", port=load_test.free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.02)
    yield server.config.port
    server.should_exit = True
    thread.join()


def status_of(port: int, target: str) -> int:
    """The status of a GET of `target` sent as it is: no client library escapes or mends it."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        return int(s.makefile("rb").readline().split()[1])


def test_a_path_reaches_its_process_and_no_other_host(stand_ins):
    """An escaped "/1/" ("/%31%2F"), or a path without its first "/", left text after the port, where "x@host" is an
    address: the front fetched any host:port it was given and sent back the answer."""
    process, service = stand_ins
    elsewhere = f"@127.0.0.1:{service.server_address[1]}/secret"
    targets = ["/%31%2F" + elsewhere, "/1%2F" + elsewhere, "%2F" + elsewhere, "/%31/config"]
    targets += ["/1/gradio_api/file=cat%20%231.png?x=1", "/1/a//b", "/favicon.ico"]
    with served(process) as port:
        assert [status_of(port, t) for t in targets] == [404, 404, 400, 404, 200, 200, 200]
    assert not service.seen
    assert [path for path, _ in process.seen] == ["/gradio_api/file=cat%20%231.png?x=1", "/a//b", "/favicon.ico"]


def test_a_cookie_that_names_no_process_places_the_page_anew(stand_ins):
    """A cookie of "²" (a digit to str.isdigit, not to int()) or of 5,000 digits (past int()'s limit): a 500."""
    cookies = ["playground_process=\u00b2".encode("latin-1"), b"playground_process=" + b"9" * 5000]
    answers = ask(stand_ins[0], *[("GET", path, {"headers": {"cookie": c}}) for c in cookies for path in ("/", "/x")])
    assert [a.status_code for a in answers] == [302, 200] * 2
    assert answers[0].headers["location"] == "1/"


def test_a_process_that_dies_mid_answer_ends_the_answer(stand_ins, caplog):
    """A process killed while its pages' streams are open: each stream ends, with a line in the log, not a
    traceback from the server for every page."""
    with caplog.at_level(logging.WARNING, logger="playground.front"):
        answer = ask(stand_ins[0], ("GET", "/1/broken", {}))[0]
    assert answer.status_code == 200 and answer.content == b"data: 1\n\n"
    assert "broke off" in caplog.text


def test_the_app_hears_the_learners_address_from_the_front_alone(stand_ins):
    """The app believes the front's X-Forwarded-For (it comes from 127.0.0.1): the front's must be the learner's
    address as its server found it, never one the page sent, and never missing (every learner a local user)."""
    process = stand_ins[0]
    ask(process, ("GET", "/1/", {}), ("GET", "/1/", {"headers": {"x-forwarded-for": "127.0.0.1"}}))
    assert [headers.get_all("x-forwarded-for") for _, headers in process.seen] == [["203.0.113.7"]] * 2


def test_app_processes_per_machine():
    assert front.default_processes(cuda=False, cores=16) == 1  # a CPU's training already takes every core
    assert front.default_processes(cuda=True, cores=16) == 8
    assert front.default_processes(cuda=True, cores=64) == 8
    assert front.default_processes(cuda=True, cores=4) == 2
    assert front.default_processes(cuda=True, cores=2) == 1
    assert front.processes_from("auto", cuda=False) == 1 and front.processes_from(" 3 ", cuda=True) == 3
    with pytest.raises(ValueError, match="auto"):
        front.processes_from("many", cuda=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA card's memory")
def test_each_process_of_a_front_takes_its_share_of_the_card():
    """What one of 8 processes may hold: a tensor past its share is refused. The app's own device (cuda, no index)
    is what it passes: a GPU run found the call refusing that."""
    past_share = int(torch.cuda.get_device_properties(0).total_memory * 0.9 / 8) + 2**30  # bytes
    try:
        front.share_card(torch.device("cuda"), 1)  # one process: the whole card
        torch.empty(past_share, dtype=torch.uint8, device="cuda")  # allowed, and freed at once
        torch.cuda.empty_cache()
        front.share_card(torch.device("cuda"), 8)
        with pytest.raises(torch.cuda.OutOfMemoryError):
            torch.empty(past_share, dtype=torch.uint8, device="cuda")
        torch.empty(2**20, device="cuda")  # within its share
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)  # the tests after this one have the whole card
        torch.cuda.empty_cache()


def test_each_process_gets_its_share_of_the_cores(front_url):
    """torch's threads in every process on every core: eight processes on 16 cores did not start in 120 s."""
    for pid in load_test.children(front_url.pid):
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        share = os.environ.get("OMP_NUM_THREADS", str(max(1, os.cpu_count() // 2)))  # one set outside is kept
        assert env[b"OMP_NUM_THREADS"] == share.encode()


def test_pages_go_to_the_processes_in_turn_and_a_browser_comes_back_to_its_own(front_url):
    first, second = (httpx.get(front_url.url, follow_redirects=False, trust_env=False) for _ in range(2))
    assert {first.headers["location"], second.headers["location"]} == {"1/", "2/"}
    again = httpx.get(front_url.url, cookies=first.cookies, follow_redirects=False, trust_env=False)
    assert again.headers["location"] == first.headers["location"]
    assert [p["ready"] for p in httpx.get(front_url.url + "processes", trust_env=False).json()] == [True, True]


def test_each_learner_trains_on_their_own_process_and_the_seats_are_shared_out(front_url):
    monitor = load_test.Monitor(front_url.url, timeout=120)
    assert len(monitor.clients) == 2 and monitor.room()["max_seats"] == 8  # 4 a process: the room's 8, not 16
    before = [load_test.call(c, api_name="/room", timeout=60)["seats"] for c in monitor.clients]  # others' seats
    places = [load_test.placed(front_url.url) for _ in range(2)]
    assert places[0] != places[1]
    learners = [load_test.connect(place, 120) for place in places]
    try:
        for learner, seed in zip(learners, (1, 2)):
            learner.predict(api_name="/load")
            learner.predict("shapes", "notebook (0.6M parameters)", seed, "adam", 0.001, 8, api_name="/reset")
        steps = [learners[0].predict(api_name="/step") for _ in range(2)] + [learners[1].predict(api_name="/step")]
        assert [load_test.step_of(s) for s in steps] == [1, 2, 1]
        # an upload passes through the front to the learner's own process
        label = learners[1].predict(handle_file(str(load_test.EXAMPLES[0])), api_name="/predict_image")[0]
        assert label["label"]
        # streamed: a Play's chart updates come through as they are made, and Pause ends it
        job = learners[0].submit(api_name="/play")
        deadline = time.monotonic() + 120
        while len(job.outputs()) < 2 and not job.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(job.outputs()) >= 2
        assert load_test.step_of(learners[0].predict(api_name="/pause")) > 2
        after = [load_test.call(c, api_name="/room", timeout=60)["seats"] for c in monitor.clients]
        assert [a - b for a, b in zip(after, before)] == [1, 1]  # one more seat in each process
    finally:
        for learner in learners:
            learner.close()
        monitor.close()


def test_an_unknown_process_and_an_oversized_body_are_refused(front_url):
    assert httpx.get(front_url.url + "9/", trust_env=False).status_code == 404
    big = httpx.post(front_url.url + "1/gradio_api/upload", content=b"0" * (17 * 2**20), trust_env=False, timeout=60)
    assert big.status_code == 413
    chunks = (b"0" * 2**20 for _ in range(17))  # no length given: the front counts as it passes the body on
    assert httpx.post(front_url.url + "1/gradio_api/upload", content=chunks, trust_env=False).status_code == 413
    # the browser's own requests outside a process's path go to its process, not into an error
    assert httpx.get(front_url.url + "favicon.ico", trust_env=False).status_code != 404


def test_a_room_of_open_streams_does_not_hold_up_the_next_request(front_url):
    """Every page keeps a stream open through the front (gradio's heartbeat, and one per event being answered): 120
    of them at once, as in a room of 100, must not make the front's next request wait for one to close."""

    async def room():
        limits = httpx.Limits(max_connections=None)
        async with httpx.AsyncClient(timeout=30, limits=limits, trust_env=False) as client:
            async with contextlib.AsyncExitStack() as streams:
                for _ in range(120):
                    url = f"{front_url.url}2/gradio_api/heartbeat/{uuid.uuid4().hex}"
                    opened = await streams.enter_async_context(client.stream("GET", url))
                    assert opened.status_code == 200
                answer = await asyncio.wait_for(client.get(front_url.url + "2/config"), 20)
                assert answer.status_code == 200

    asyncio.run(room())


def test_a_file_whose_name_needs_escaping_comes_back_through_the_front(front_url):
    """The path is passed on as the page sent it: "cat #1.png" stays one file name, not a path and a fragment."""
    base = front_url.url + "2/gradio_api/"
    sent = httpx.post(base + "upload", files={"files": ("cat #1 50%.png", b"\x89PNG not really")}, trust_env=False)
    path = sent.json()[0]
    assert path.endswith("cat #1 50%.png")
    back = httpx.get(base + "file=" + urllib.parse.quote(path), trust_env=False)
    assert back.status_code == 200 and back.content == b"\x89PNG not really"


def test_a_process_that_dies_is_started_again_and_serves(front_url):
    """Last in this file: it ends process 1 (a crash, a kill), which the front starts again; process 2 serves on."""
    first = load_test.children(front_url.pid)[0]
    os.kill(first, signal.SIGKILL)
    deadline, seen_down = time.monotonic() + 180, False
    while time.monotonic() < deadline:
        ready = [p["ready"] for p in httpx.get(front_url.url + "processes", trust_env=False).json()]
        seen_down = seen_down or not ready[0]
        if seen_down and ready == [True, True]:
            break
        time.sleep(0.5)
    assert seen_down and ready == [True, True]
    assert first not in load_test.children(front_url.pid)
    learner = load_test.connect(front_url.url + "1/", 120)
    try:
        learner.predict(api_name="/load")
        learner.predict("shapes", "notebook (0.6M parameters)", 3, "adam", 0.001, 8, api_name="/reset")
        assert load_test.step_of(learner.predict(api_name="/step")) == 1
    finally:
        learner.close()


def test_the_app_processes_end_when_the_front_is_killed_even_while_they_start():
    """A front killed outright (no clean-up runs) leaves no app process holding the card and a port."""
    env = {**os.environ, "PLAYGROUND_PROCESSES": "2", "GRADIO_SERVER_PORT": str(load_test.free_port())}
    load_test.quiet_local_env(env)
    front = subprocess.Popen([sys.executable, "app.py"], cwd=load_test.ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(load_test.children(front.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        procs = load_test.children(front.pid)
        assert len(procs) == 2
    finally:
        front.kill()
        front.wait()
    deadline = time.monotonic() + 60
    while [p for p in procs if os.path.exists(f"/proc/{p}")] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in procs if os.path.exists(f"/proc/{p}")]
