"""The workshop front (resnet.front) before two real app processes: pages go to the processes in turn and a browser
comes back to its own; each learner's requests (uploads and streams too) reach their process and no other; the room's
seats are shared out, not multiplied; bad paths and oversized bodies are refused; the processes end with the front."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid

import httpx
import pytest
import torch
from gradio_client import handle_file

from resnet import front
from tests import load_test


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
