"""A session's training step as one CUDA graph: the host launches a whole step with one `replay()`.

On a GPU a batch-64 step is ~1 ms of kernels behind ~8 ms of Python and launches, so the host, not the card, sets a
workshop's pace. Captured once, the step (the undo snapshot, forward, backward, optimizer, and every statistic the
divergence guard and the telemetry need, in one buffer) costs the host a copy of the batch, a replay and one small
read of that buffer. A capture fits one key (input shape, shortcut mask, optimizer, telemetry) and is made again
when the key changes; the lr lives in a device tensor the graph reads, so an lr change needs none. Without capture
(`capture=False`) the same code runs eagerly: how CPU tests check everything but the capture itself.
"""

import logging
import threading
from typing import NamedTuple

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# eager runs of a new key's step before it is captured: cuDNN and cuBLAS pick their kernels and workspaces, and the
# autograd engine its streams, outside the capture (the PyTorch CUDA-graph docs' warm-up). They are real steps.
WARMUP_STEPS = 2
# One capture at a time, on a stream only captures use. torch.cuda.Stream() hands out streams from a small shared
# pool, and another learner's work on a stream being captured would be recorded into this graph (or break it).
# Replays and eager steps run on the default stream, which a capture on a non-blocking stream does not wait for.
_capture_lock = threading.Lock()
_capture_streams: dict[int, torch.cuda.Stream] = {}


class StepKey(NamedTuple):
    """What a captured step is specific to: a change to any of these makes a new capture."""

    x_shape: tuple  # (batch, channels, 32, 32)
    shortcuts: tuple  # the shortcut mask: the forward's Python branches
    optimizer: int  # the optimizer object's serial (a new optimizer, a reset) ...
    with_state: int  # ... and how many parameters have optimizer state (a projection's first gradient)
    telemetry: bool  # whether the stats buffer holds weight norms and update ratios


class StaticStep:
    """One session's step on static tensors: `run(x, y)` copies the batch in, steps, and returns the stats as floats.
    The session's own tensors (parameters, BN statistics, optimizer state) are updated in place, as ever."""

    def __init__(self, session, key: StepKey, capture: bool):
        self.session, self.key, self.capture = session, key, capture
        self.live = session._live_tensors()  # everything a step changes
        self.with_state = {id(p) for p in session.optimizer.state}
        self.copies = [t.detach().clone() for t in self.live]  # the undo: the step writes them before it starts
        self.x = torch.empty(key.x_shape, device=session.device).contiguous(memory_format=session.memory_format)
        self.y = torch.empty(key.x_shape[0], dtype=torch.long, device=session.device)
        self.stats = None  # (3 + k or 3 + 3k,) float32, made by the step's first run
        self.graph = None
        self.runs = 0
        self.failed = None  # why the capture failed, if it did: the session then steps eagerly

    def _body(self) -> None:
        """The step itself, as the graph records it: no host sync, no allocation outside the graph's pool."""
        s = self.session
        torch._foreach_copy_(self.copies, self.live)
        s.optimizer.zero_grad(set_to_none=True)  # backward then writes fresh gradients (captured: into the pool)
        s.model.train()
        # autocast's weight cache would hold casts made during capture outside the graph's memory
        with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.precision == "bf16", cache_enabled=False):
            logits = s.forward(self.x)
        loss = F.cross_entropy(logits.float(), self.y)
        loss.backward()
        s.optimizer.step()
        stats = s._stats(self.copies[: len(s.weights)], logits, loss, self.y)
        if self.stats is None:
            self.stats = torch.empty_like(stats)
        self.stats.copy_(stats)

    def run(self, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        self.x.copy_(x)
        self.y.copy_(y)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._body()
            self.runs += 1
            if self.capture and self.runs == WARMUP_STEPS:
                try:
                    self._capture()
                except Exception as e:  # noqa: BLE001 -- any failure to capture leaves the eager step, never none
                    self.failed = f"{type(e).__name__}: {e}"
                    log.warning("CUDA graph capture failed (%s); this session steps eagerly", self.failed)
        return self.stats.tolist()  # the one host sync of a step

    def _capture(self) -> None:
        """Record the body into a CUDA graph (recorded, not run: the next run replays it)."""
        graph = torch.cuda.CUDAGraph()
        device = self.session.device
        with _capture_lock:
            stream = _capture_streams.setdefault(device.index or 0, torch.cuda.Stream(device))
            stream.wait_stream(torch.cuda.current_stream(device))  # the warm-up steps' work comes first
            # thread_local: other learners' threads go on launching their own work while this one captures
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                self._body()
            torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = graph

    def restore(self) -> None:
        """Undo the last step: everything back as it was before it (the copies its run wrote first), and no
        optimizer state for a parameter whose first gradient that step was."""
        torch._foreach_copy_(self.live, self.copies)
        state = self.session.optimizer.state
        for p in [p for p in state if id(p) not in self.with_state]:
            del state[p]

    def close(self) -> None:
        """Let go of the graph and its memory pool; the gradients in that pool go with it."""
        self.session.optimizer.zero_grad(set_to_none=True)
        self.graph = None
