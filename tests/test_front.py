"""The workshop front (resnet.front) before two real app processes: pages go to the processes in turn and a browser
comes back to its own; each learner's requests (uploads and streams too) reach their process and no other; the room's
seats are shared out, not multiplied; bad paths and oversized bodies are refused; the processes end with the front."""

import os
import time

import httpx
import pytest
from gradio_client import handle_file

from resnet import front
from tests import load_test
from tests.conftest import free_port


def test_app_processes_per_machine():
    assert front.default_processes(cuda=False, cores=16) == 1  # a CPU's training already takes every core
    assert front.default_processes(cuda=True, cores=16) == 8
    assert front.default_processes(cuda=True, cores=64) == 8
    assert front.default_processes(cuda=True, cores=4) == 2
    assert front.default_processes(cuda=True, cores=2) == 1


@pytest.fixture(scope="module")
def front_url():
    port = free_port()
    server = load_test.start_server(port, idle_seconds=600, seats=8, timeout=240, app_processes=2)
    url = f"http://127.0.0.1:{port}/"
    server.url = url
    yield server
    procs = load_test.children(server.pid)
    load_test.stop_server(server)
    assert procs and not [p for p in procs if os.path.exists(f"/proc/{p}") and not zombie(p)], "processes left"


def zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_pages_go_to_the_processes_in_turn_and_a_browser_comes_back_to_its_own(front_url):
    first, second = (httpx.get(front_url.url, follow_redirects=False, trust_env=False) for _ in range(2))
    assert {first.headers["location"], second.headers["location"]} == {"1/", "2/"}
    again = httpx.get(front_url.url, cookies=first.cookies, follow_redirects=False, trust_env=False)
    assert again.headers["location"] == first.headers["location"]
    assert [p["ready"] for p in httpx.get(front_url.url + "processes", trust_env=False).json()] == [True, True]


def test_each_learner_trains_on_their_own_process_and_the_seats_are_shared_out(front_url):
    monitor = load_test.Monitor(front_url.url, timeout=120)
    assert len(monitor.clients) == 2 and monitor.room()["max_seats"] == 8  # 4 a process: the room's 8, not 16
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
        rooms = [load_test.call(c, api_name="/room", timeout=60) for c in monitor.clients]
        assert sorted(r["seats"] for r in rooms) == [1, 1]  # one seat in each process
    finally:
        for learner in learners:
            learner.close()
        monitor.close()


def test_an_unknown_process_and_an_oversized_body_are_refused(front_url):
    assert httpx.get(front_url.url + "9/", trust_env=False).status_code == 404
    big = httpx.post(front_url.url + "1/gradio_api/upload", content=b"0" * (17 * 2**20), trust_env=False, timeout=60)
    assert big.status_code == 413
    # the browser's own requests outside a process's path go to its process, not into an error
    assert httpx.get(front_url.url + "favicon.ico", trust_env=False).status_code != 404
