"""A session's training step as one CUDA graph: the host launches a whole step with one `replay()`.

On a GPU a batch-64 step is ~1 ms of kernels behind ~8 ms of Python and launches, so the host, not the card, sets a
workshop's pace. Captured once, the step (the undo snapshot, forward, backward, optimizer, and every statistic the
divergence guard and the telemetry need, in one buffer; and the session's next batch, from its permutation and the
augmentation's draws) costs the host a few launches and a replay. The guard decides on the device too (a step that
diverged undoes itself), so the host reads nothing between steps: it reads a turn's steps at once, and host and
card work side by side. A capture fits one key (input shape, shortcut mask, optimizer, telemetry, whether the batch
is made or copied in) and is made again when the key changes; the lr lives in a device tensor the graph reads, so
an lr change needs none. Without capture (`capture=False`) the same code runs eagerly: how CPU tests check
everything but the capture itself.
"""

import logging
import os
import threading
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .data import augment_draws
from .undo import Snapshot

log = logging.getLogger(__name__)

# eager runs of a new key's step before it is captured: cuDNN and cuBLAS pick their kernels and workspaces, and the
# autograd engine its streams, outside the capture (the PyTorch CUDA-graph docs' warm-up). They are real steps.
WARMUP_STEPS = 2
# A graph keeps the memory of its largest step for as long as it lives: above this batch a step is GPU-bound anyway
# (launches are a small part of it), so it stays eager and its memory goes back to the shared cache after each step.
MAX_CAPTURED_BATCH = 512
# One capture at a time, on a stream only captures use: another learner's work on a stream being captured would be
# recorded into this graph (or break it). torch.cuda.Stream() hands out 32 pooled streams per priority in turn, and
# each session trains on one of the normal-priority pool (Session._on_stream; with more than 32 learners some share
# one), so captures take theirs from the high-priority pool, which no session draws from. (A replay runs at the
# priority of the stream it is launched on, the session's.) Non-blocking, neither waits for the default stream.
# The lock also covers what must not run during another thread's capture: freeing a graph, emptying the cache.
_capture_lock = threading.Lock()
_capture_streams: dict[int, torch.cuda.Stream] = {}
_broken: str | None = None  # a capture failed: torch may think one is still under way, so no more are made
# graphs whose step was dropped with its session (the pool frees a departed learner's by reference counting, under
# no lock of ours): kept here until free_retired (the pool, once it has let sessions go), the next capture or
# empty_cache frees them under the lock
_retired: list = []
# cuBLAS keeps one workspace per stream; made during the first capture on the capture stream, it would live in that
# graph's memory and every later graph would use it too, and freeing that graph frees it under them (pytorch issue
# 193402). Without a workspace there is nothing to share: only the final linear layer's small GEMM uses cuBLAS here.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":0:0")
os.environ.setdefault("CUBLASLT_WORKSPACE_SIZE", "0")
# capturable Adam says, once per optimizer, that its eager (warm-up, first) steps are slower than a plain Adam's
warnings.filterwarnings("ignore", message=".*capturable=True.*")


class StepKey(NamedTuple):
    """What a captured step is specific to: a change to any of these makes a new capture."""

    x_shape: tuple  # (batch, channels, 32, 32)
    shortcuts: tuple  # the shortcut mask: the forward's Python branches
    optimizer: int  # the optimizer object's serial (a new optimizer, a reset) ...
    with_state: int  # ... and how many parameters have optimizer state (a projection's first gradient)
    telemetry: bool  # whether the stats buffer holds weight norms and update ratios
    makes_batch: bool  # the step makes the session's next batch itself (else the batch is copied in)
    augment: bool  # ... and shifts and flips it


def empty_cache() -> None:
    """torch.cuda.empty_cache(), never during another thread's capture (torch asserts that none is under way)."""
    with _capture_lock:
        _retired.clear()
        torch.cuda.empty_cache()


def free_retired() -> None:
    """Free the graphs of sessions dropped since the last capture (their memory back to the shared cache)."""
    if _retired:
        with _capture_lock:
            _retired.clear()


def training_stream(device: torch.device) -> torch.cuda.Stream:
    """A stream for a session to train on: one of torch's pooled normal-priority streams, never a capture's."""
    return torch.cuda.Stream(device)


class StaticStep:
    """One session's step on static tensors: `run(session, x, y)` copies the batch in and launches the step; its
    statistics, not yet read, come back in a tensor of their own. The session's own tensors (parameters, BN
    statistics, optimizer state) are updated in place, as ever, and put back on the device if the step diverged.
    It holds no reference to its session (a session must be freed the moment its learner's seat is)."""

    def __init__(self, session, key: StepKey, capture: bool):
        self.key, self.capture = key, capture
        self.with_state = {id(p) for p in session.optimizer.state}
        self.undo = Snapshot(session._live_tensors())  # everything a step changes; the step rewrites it first
        b, device = key.x_shape[0], session.device
        if key.makes_batch:  # what the host gives a step that makes its own batch: where it starts, the draws
            self.start = torch.zeros((), dtype=torch.long, device=device)
            self.arange = torch.arange(b, device=device)
            draws = (torch.empty((2, b, 1), dtype=torch.long, device=device), torch.empty((b, 1), device=device))
            self.draws = draws if key.augment else None
        else:  # the batch itself
            self.x = torch.empty(key.x_shape, device=device).contiguous(memory_format=session.memory_format)
            self.y = torch.empty(b, dtype=torch.long, device=device)
        self.stats = None  # (3 + k or 3 + 3k, then 1 if the step stood else 0,) float32, made by the first run
        self.graph = None
        self.runs = 0
        self.failed = None  # why the capture failed, if it did: the session then steps eagerly

    def _body(self, s) -> None:
        """The step itself, as the graph records it: no host sync, no allocation outside the graph's pool."""
        self.undo.take(self.undo.tensors)
        s.optimizer.zero_grad(set_to_none=True)  # backward then writes fresh gradients (captured: into the pool)
        s.model.train()
        if self.key.makes_batch:  # the session's next batch: its permutation from `start` on, shifted by the draws
            x, y = s._batch(s._order.index_select(0, self.start + self.arange), self.draws)
        else:
            x, y = self.x, self.y
        # autocast's weight cache would hold casts made during capture outside the graph's memory
        with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.precision == "bf16", cache_enabled=False):
            logits = s.forward(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        s.optimizer.step()
        stats = s._stats(self.undo.copies[: len(s.weights)], logits, loss, y)
        stands = s._stands(stats)  # () bool
        self.undo.keep_if(stands)
        stats = torch.cat([stats, stands.float()[None]])
        if self.stats is None:
            self.stats = torch.empty_like(stats)
        self.stats.copy_(stats)

    def run(self, session, x: torch.Tensor | None = None, y: torch.Tensor | None = None, start: int = 0):
        """One step on (x, y), or (a step that makes its batch) on the session's next batch, which begins at `start`
        in its permutation; its statistics and whether it stood, as a tensor the host has not waited for. The
        host's share: a few launches."""
        if self.key.makes_batch:
            self.start.fill_(start)
            if self.draws is not None:  # drawn here, in the order next_batch draws them: the same numbers
                augment_draws(len(self.arange), session.device, session.generator, out=self.draws)
        else:
            self.x.copy_(x)
            self.y.copy_(y)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._body(session)
            self.runs += 1
            if self.capture and self.runs == WARMUP_STEPS:
                self._capture(session)
        return self.stats.clone()  # the next run overwrites self.stats before the host reads this one

    def _capture(self, session) -> None:
        """Record the body into a CUDA graph (recorded, not run: the next run replays it). Not torch.cuda.graph():
        its entry synchronises the whole device and empties the allocator's cache, stalling every learner's step
        for each one's shortcut switch. A failure leaves this session eager, and no later capture is tried."""
        global _broken
        device = session.device
        with _capture_lock:
            if _broken is not None:
                self.failed = _broken
                return
            try:
                caller = torch.cuda.current_stream(device)
                _retired.clear()
                if device.index not in _capture_streams:
                    _capture_streams[device.index] = torch.cuda.Stream(device, priority=-1)
                stream = _capture_streams[device.index]
                stream.wait_stream(caller)  # the warm-up steps' work comes first
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.stream(stream):
                    # thread_local: other learners' threads go on launching their own work meanwhile
                    graph.capture_begin(capture_error_mode="thread_local")
                    try:
                        self._body(session)
                    finally:
                        graph.capture_end()
                caller.wait_stream(stream)
            except Exception as e:  # noqa: BLE001 -- any failure to capture leaves the eager step, never none
                # torch 2.11's capture_end can fail before it hands the allocator back: no capture is safe after
                self.failed = _broken = f"{type(e).__name__}: {e}"
                log.warning("CUDA graph capture failed (%s); every session steps eagerly from now on", self.failed)
                return
        self.graph = graph

    def new_state(self, session) -> bool:
        """Whether a run made optimizer state this step does not cover (a projection's first gradient in a warm-up
        run): the host must then read that run at once, and drop the state if the run was undone."""
        return len(session.optimizer.state) != len(self.with_state)

    def restore(self, session) -> None:
        """Undo the last step from the host: everything back as it was before it (the copies its run wrote first),
        and no optimizer state for a parameter whose first gradient that step was."""
        self.undo.restore()
        state = session.optimizer.state
        for p in [p for p in state if id(p) not in self.with_state]:
            del state[p]

    def __del__(self):
        if self.graph is not None:  # dropped with its session, not closed: free the graph under the lock, later
            _retired.append(self.graph)

    def close(self, session) -> None:
        """Let go of the graph and its memory pool (its gradients with it); under the capture lock, as freeing a
        graph during another's capture would pull memory from under it."""
        session.optimizer.zero_grad(set_to_none=True)
        with _capture_lock:
            self.graph = None
