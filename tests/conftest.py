"""Shared fixtures: one launched app for the tests that talk to it over HTTP (gradio_client) or drive it in a browser,
a learner on it, and single-threaded torch for tests of tiny tensors."""

import os

import pytest

# one server hosts every test's learners, and a learner who leaves keeps their seat for a reload's grace: seat
# them all (the full-room test sets its own limit)
os.environ.setdefault("PLAYGROUND_MAX_SESSIONS", "200")
os.environ.setdefault("PLAYGROUND_GUIDED_FAST", "1")  # guided experiments at their fast settings: seconds, same effects
import torch

from tests.load_test import free_port


@pytest.fixture(scope="session")
def app_url():
    import app

    # one torch thread: the browser and the test runner share the 2 cores with the server, and two torch threads
    # contending with them for both cores run many times slower than one
    torch.set_num_threads(1)
    demo = app.build_demo()
    port = free_port()
    app.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture()
def client(app_url):
    """A new learner (its own session) on the launched app, after the page's first event."""
    from gradio_client import Client

    c = Client(app_url, verbose=False)
    c.predict(api_name="/load")
    return c


@pytest.fixture()
def one_thread():
    """Tiny tensors: one thread beats two contending for busy shared cores (a batch norm took 25 ms, not 0.1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def front_url():
    """`python app.py` with two app processes behind the workshop front (resnet.front), its URL as `.url`."""
    from tests import load_test

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
