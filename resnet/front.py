"""The workshop front: one public port, several app processes behind it.

One app process answers about 30 learner actions a second: gradio's event handling and ours share its one GIL (a
Step costs it ~13 ms, a Predict ~30). A room of 100 on one GPU needs more, so the front starts several copies of the
app on local ports, sends each new page to the next one in turn, and passes every request under `/<k>/` to process k.
A page's requests all carry its path, so a learner stays with one process, and their session, until they leave.
"""

import asyncio
import contextlib
import ctypes
import itertools
import logging
import os
import runpy
import signal
import subprocess
import sys
import time

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, StreamingResponse
from starlette.routing import Route

log = logging.getLogger("playground.front")
STARTING = '<meta http-equiv="refresh" content="3"><p>The playground is starting: this page reloads by itself.</p>'
METHODS = ["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"]
COOKIE = "playground_process"  # which process a browser was sent to: a reload of "/" goes back to it
# headers that describe one hop, not the request (RFC 9110 7.6.1); content-length passes: bodies are streamed as is
HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding",
       "upgrade", "host"}  # fmt: skip


class TooLarge(Exception):
    """A request's body went past the front's limit while it was being passed on."""


def default_processes(cuda: bool, cores: int | None = None) -> int:
    """App processes for this machine: one on a CPU (its training already takes every core); on a GPU, one per two
    cores (an app process and its share of the harness's or the browsers' work), at most 8."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(8, cores // 2)) if cuda else 1


def processes_from(setting: str, cuda: bool) -> int:
    """PLAYGROUND_PROCESSES: a number, or "auto" for this machine's default_processes."""
    if setting.strip().lower() == "auto":
        return default_processes(cuda)
    try:
        return max(1, int(setting))
    except ValueError:
        raise ValueError(f'PLAYGROUND_PROCESSES must be a number or "auto", not {setting!r}') from None


class Front:
    """The processes' ports and the ASGI app that routes to them (`app`). Each process runs the script `app_file`."""

    def __init__(self, app_file: str, processes: int, port: int, env: dict | None = None, max_body_mb: int = 16):
        self.app_file, self.env = os.path.abspath(app_file), dict(env if env is not None else os.environ)
        self.ports = [port + 1 + k for k in range(processes)]  # process k+1 listens on port + 1 + k, locally
        self.max_body = max_body_mb * 2**20  # the app refuses larger uploads itself; the front never holds more
        self.procs: list[subprocess.Popen | None] = [None] * processes
        self._next = itertools.cycle(range(1, processes + 1))
        self._client: httpx.AsyncClient | None = None
        self._watcher: asyncio.Task | None = None
        routes = [
            Route("/", self.place),
            Route("/processes", self.processes),
            Route("/{k:int}", self.slash),
            Route("/{k:int}/{path:path}", self.forward, methods=METHODS),
            Route("/{path:path}", self.forward, methods=METHODS),  # the browser's own asks (/favicon.ico): its process
        ]
        self.app = Starlette(routes=routes, lifespan=self._lifespan)

    # --- the processes ---------------------------------------------------------------------------------------
    def start(self, k: int) -> None:
        outer = self.env.get("GRADIO_ROOT_PATH", "").rstrip("/")  # the front itself may live under a path
        env = {
            **self.env,
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(self.ports[k - 1]),
            "GRADIO_ROOT_PATH": f"{outer}/{k}",  # the URLs it writes into its pages and files are the front's
            "PLAYGROUND_FRONT_PID": str(os.getpid()),  # it serves (no front of its own) and ends with this one
        }
        # its share of the cores for torch's threads: 8 processes on an H200's 16-core host with every core each had
        # not answered after 120 s, with 2 each they started in 21-26 s (2 on 2 cores: 51 s against 11.5 s)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(self.ports))))
        # `python -m resnet.front APP`: ends with the front from its first moment (boot), then runs the app
        command = [sys.executable, "-m", "resnet.front", self.app_file]
        self.procs[k - 1] = subprocess.Popen(command, env=env, cwd=os.path.dirname(self.app_file))
        log.info("process %d started on port %d (pid %d)", k, self.ports[k - 1], self.procs[k - 1].pid)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        await self._start()
        try:
            yield
        finally:
            await self._stop()

    async def _start(self) -> None:
        # no limit on connections: every page holds streams open through the front (gradio's heartbeat, one per
        # event being answered), and httpx's default of 100 made a room of 100's next request wait for one to end
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5), limits=limits, trust_env=False)
        for k in range(1, len(self.ports) + 1):
            self.start(k)
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """A process that died is started again (not more than every 10 s: one that cannot start must not spin):
        its learners lose their sessions, the others keep theirs."""
        started = [time.monotonic()] * len(self.procs)
        while True:
            await asyncio.sleep(1)
            for k, proc in enumerate(self.procs, start=1):
                if proc is not None and proc.poll() is not None and time.monotonic() - started[k - 1] >= 10:
                    log.error("process %d exited with code %s: starting it again", k, proc.returncode)
                    started[k - 1] = time.monotonic()
                    try:
                        self.start(k)
                    except OSError:
                        log.exception("process %d could not be started", k)

    async def _stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()  # nothing is started again while the front stops
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            if proc is not None:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if self._client is not None:
            await self._client.aclose()

    # --- routes ----------------------------------------------------------------------------------------------
    async def place(self, request: Request):
        """A new page goes to the next process in turn; a browser that was here before, to its own."""
        k = self.known(request) or next(self._next)
        query = f"?{request.url.query}" if request.url.query else ""
        response = RedirectResponse(f"{k}/{query}", status_code=302)  # relative: right behind any outer proxy
        response.set_cookie(COOKIE, str(k), samesite="lax")
        return response

    def known(self, request: Request) -> int | None:
        # compared as text: "²" is a digit to isdigit() and not to int(), and int() refuses 5,000 digits (a 500 each)
        known = request.cookies.get(COOKIE, "")
        return int(known) if known in {str(k) for k in range(1, len(self.ports) + 1)} else None

    async def processes(self, request: Request):
        """The processes' paths and whether each answers: for a load test or an instructor's check."""
        ready = await asyncio.gather(*(self._answers(port) for port in self.ports))
        return JSONResponse([{"path": f"/{k}/", "ready": r} for k, r in enumerate(ready, start=1)])

    async def _answers(self, port: int) -> bool:
        try:
            return (await self._client.get(f"http://127.0.0.1:{port}/config", timeout=5)).status_code == 200
        except httpx.HTTPError:
            return False

    async def slash(self, request: Request):
        return RedirectResponse(f"{request.path_params['k']}/", status_code=307)

    async def forward(self, request: Request):
        k = request.path_params.get("k")
        if k is None:
            k = self.known(request) or 1
        if not 1 <= k <= len(self.ports):
            return PlainTextResponse("No such page.", status_code=404)
        length = int(request.headers.get("content-length") or 0)
        if length > self.max_body:
            return PlainTextResponse("That file is too large.", status_code=413)
        # the app believes X-Forwarded-For from 127.0.0.1: it hears the learner's address as this server found it
        # (believing a local proxy's only, as the app alone would), not one the page sent, nor none (every learner
        # would be 127.0.0.1, a local user to gradio)
        dropped = HOP | {"x-forwarded-for"}
        headers = [(n, v) for n, v in request.headers.raw if n.decode("latin-1").lower() not in dropped]
        if request.client is not None:
            headers.append((b"x-forwarded-for", request.client.host.encode("latin-1")))
        if b"x-forwarded-host" not in {n.lower() for n, _ in headers}:  # an outer proxy's (a Space's) are kept
            headers.append((b"x-forwarded-host", request.headers.get("host", "").encode("latin-1")))
            headers.append((b"x-forwarded-proto", request.url.scheme.encode("latin-1")))
        # the path as the page sent it, escapes and all (path_params are decoded: a file "cat #1.png" would break);
        # "/k" comes off only as sent: "/%31%2F@host:port/" matched "/1/", and what was left named another server
        path = request.scope["raw_path"]
        if "k" in request.path_params:
            first, _, rest = path[1:].partition(b"/")
            if first != str(k).encode():
                return PlainTextResponse("No such page.", status_code=404)
            path = b"/" + rest
        if request.scope["query_string"]:
            path += b"?" + request.scope["query_string"]
        try:  # the host and port given apart from the path: nothing in it can name another
            url = httpx.URL(scheme="http", host="127.0.0.1", port=self.ports[k - 1], raw_path=path)
        except (httpx.InvalidURL, UnicodeDecodeError):  # not a path, or not ASCII (a browser escapes the rest)
            return PlainTextResponse("That is not a path.", status_code=400)
        body = self._capped(request) if length or "transfer-encoding" in request.headers else None
        try:
            upstream = await self._client.send(
                self._client.build_request(request.method, url, headers=headers, content=body), stream=True
            )
        except httpx.ConnectError:  # starting (or starting again): the page asks again by itself
            return HTMLResponse(STARTING, status_code=503, headers={"Retry-After": "3"})
        except TooLarge:  # a body sent without its length, past the limit
            return PlainTextResponse("That file is too large.", status_code=413)
        except httpx.TransportError:  # the process went away mid-request: it is being started again
            return HTMLResponse(STARTING, status_code=502, headers={"Retry-After": "3"})
        kept = [(n, v) for n, v in upstream.headers.raw if n.decode("latin-1").lower() not in HOP]
        response = StreamingResponse(relay(upstream), status_code=upstream.status_code)
        response.raw_headers = kept  # as the app sent them (content-encoding, set-cookie, event-stream) unchanged
        return response

    async def _capped(self, request: Request):
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > self.max_body:
                raise TooLarge
            yield chunk


def share_card(device, processes: int) -> None:
    """In one of a front's processes on a GPU: take at most its share of the card's memory. Each process's caching
    allocator keeps what it freed and gives it back only when it itself runs short, so 8 processes on an H200 held
    ~17 GB each until the card was full and graph captures failed (their learners then stepped eagerly)."""
    if device.type == "cuda" and processes > 1:
        import torch

        # of the device the app trains on: torch.device("cuda") names no index, and this call wants one
        index = device.index if device.index is not None else torch.cuda.current_device()
        try:
            torch.cuda.set_per_process_memory_fraction(0.9 / processes, index)  # 0.1 of the card: CUDA contexts
        except (RuntimeError, ValueError):  # the app still serves, its memory unbounded: say so, do not stop it
            log.exception("this process's share of the card's memory could not be set")


def end_with_parent(front_pid: int) -> None:
    """In a process the front started: end when the front ends, even by a kill that runs no clean-up (Linux), and
    at once if it already has. Not a Popen preexec_fn: between fork and exec, loading libc can deadlock the front."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not glibc: the front's own shutdown still stops them
        pass
    if os.getppid() != front_pid:  # the front died before the line above: nobody would stop this process
        sys.exit(0)


async def relay(upstream: httpx.Response):
    """The app's answer as it comes (an event stream too); closed also when the page goes before it ends. One that
    breaks off (its process died: every page's open streams at once) ends there, with a line in the log; one of a
    declared length still ends in uvicorn's error, which drops the connection: the page must see it was cut short."""
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except (httpx.HTTPError, httpx.StreamError) as e:
        log.warning("an answer from %s broke off: %r", upstream.url, e)
    finally:
        await upstream.aclose()


def serve(app_file: str, processes: int, host: str, port: int) -> None:
    """Start `processes` copies of the app (the script `app_file`) behind a front on host:port; returns when
    stopped. Every open page holds a stream: a stop waits 5 s for them, not until the last tab is closed."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request a room makes
    front = Front(app_file, processes, port)
    log.info("front on %s:%d for %d app processes (ports %s)", host, port, processes, front.ports)
    uvicorn.run(
        front.app, host=host, port=port, log_level="warning", timeout_keep_alive=30, timeout_graceful_shutdown=5,
        server_header=False, date_header=False,  # the app's own go through
    )  # fmt: skip


if __name__ == "__main__":  # an app process of a front (Front.start): end with the front, then run the app
    end_with_parent(int(os.environ["PLAYGROUND_FRONT_PID"]))
    runpy.run_path(sys.argv[1], run_name="__main__")
