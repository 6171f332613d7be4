"""A training session: one learner's model, optimizer, data and history, stepped a few batches at a time.

Built to be watched: every step records loss, accuracy and, for each conv/linear layer, the gradient norm, the
weight norm and the update/weight ratio, computed for all layers at once on the device and copied to the host in
one transfer per step (a static step's: per turn of steps). A step whose loss or gradients are not finite, or that
moves a layer by more than MAX_UPDATE_RATIO times its weights, is undone (weights, BN statistics and optimizer
state restored) and reported, telemetry on or off, so a learner who types lr=1000 loses nothing but that step.
"""

import itertools
import logging
import math
import numbers
import threading
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F

from . import graphstep
from .data import Dataset, augment_draws, load_dataset, normalize, shift_and_flip
from .errors import UserError
from .graphstep import StaticStep, StepKey
from .model import ResNet, ResNetConfig, private_rng
from .undo import Snapshot, restored

log = logging.getLogger(__name__)
OPTIMIZERS = ("adam", "sgd")
# a step that moves any layer by more than this many times its own weights has diverged, finite or not
# (Adam at lr=1e3 keeps the loss finite thanks to BN, yet replaces every weight); lr 0.1 Adam stays below it.
# Checked at every step, telemetry on or off.
MAX_UPDATE_RATIO = 10.0
STEP_MODES = ("auto", "eager", "graph", "static")
_serials = itertools.count()  # models' and optimizers' serial numbers, never reused (an id() can be)


@dataclass
class TrainConfig:
    dataset: str = "shapes"  # a name in resnet.data.DATASETS
    optimizer: str = "adam"  # "adam" or "sgd" (with momentum)
    lr: float = 1e-3  # step size; the notebook's Adam uses 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0  # L2 penalty per step, both optimizers
    batch_size: int = 64  # images per training step
    augment: bool = True  # random flips and shifts of up to 4 px, on the device
    eval_every: int = 50  # steps between held-out evaluations; 0: never
    eval_size: int = 500  # held-out images per evaluation (the same ones each time)
    seed: int = 0  # weights, batch order and augmentation all follow from it
    device: str = "auto"  # "auto": cuda, else mps, else cpu; or any torch device string
    precision: str = "auto"  # "auto": bf16 autocast where the hardware computes bf16 natively, else "fp32"
    telemetry: bool = True  # per-layer gradient/weight/update statistics at each step
    compile: bool = False  # torch.compile the model: faster on CUDA after a minute of warm-up; eager if it fails
    # "auto": each step one captured CUDA graph on CUDA (graphstep.py), eager elsewhere; "eager"; "graph";
    # "static": the graph's step run without capture (how a CPU checks it)
    step_mode: str = "auto"
    # on CUDA, the session trains on a CUDA stream of its own, so that learners' small steps overlap on the card
    # (they leave most of it idle); False: on the default stream, one learner's kernels after another's
    own_stream: bool = True
    history_points: int = 2000  # steps kept; when full, every other one is dropped (older ones grow sparser), never cut


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_bf16() -> bool:
    """bf16 autocast pays on a CPU only with AMX or AVX512-BF16 units; elsewhere it is slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        if name not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {name!r}; choose from ['auto', 'bf16', 'fp32']")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


def pick_step_mode(name: str, device: torch.device, compiled: bool) -> str:
    """How this session steps: a CUDA graph on CUDA unless the model is compiled (torch.compile makes its own)."""
    if name not in STEP_MODES:
        raise ValueError(f"unknown step mode {name!r}; choose from {list(STEP_MODES)}")
    if name == "auto":
        return "graph" if device.type == "cuda" and not compiled else "eager"
    return name


def thin(records: list, max_points: int) -> list:
    """At most max_points of the records, evenly spaced, always ending with the newest; a new list (a reader's own
    copy, which a training thread's appends do not reach). A full History thins itself with it, every other record,
    and the charts thin what they send."""
    stride = max(1, math.ceil(len(records) / max_points))
    return records[::-1][::stride][::-1]


class History:
    """Per-step records, evaluations and events (shortcut switches, lr changes, rejected steps), bounded."""

    def __init__(self, points: int):
        self.points = max(2, points + points % 2)  # even: one record over, thinning keeps the first and the newest
        self.steps: list[dict] = []
        self.evals: list[dict] = []
        self.events: list[dict] = []

    def add_step(self, record: dict):
        self.steps = self._kept(self.steps, record)

    def add_eval(self, record: dict):
        self.evals = self._kept(self.evals, record)

    def _kept(self, records: list[dict], record: dict) -> list[dict]:
        records.append(record)
        return thin(records, self.points) if len(records) > self.points else records

    def add_event(self, step: int, kind: str, text: str):
        self.events.append({"step": step, "kind": kind, "text": text})
        del self.events[: -self.points]


class Session:
    """One learner's training run. Not shared between users; `lock` guards it against the app's threads."""

    def __init__(
        self, config: TrainConfig | None = None, model_config: ResNetConfig | None = None, data: Dataset | None = None
    ):
        """`data`: a dataset of this learner's own (an uploaded zip) instead of the registered `config.dataset`."""
        self.config = config or TrainConfig()
        if data is not None:
            self.config = replace(self.config, dataset=data.name)
        self.lock = threading.RLock()
        self.device = pick_device(self.config.device)
        self.precision = pick_precision(self.config.precision, self.device)
        self.step_mode = pick_step_mode(self.config.step_mode, self.device, self.config.compile)
        self.captures = 0  # static steps made (on CUDA: graphs captured), for the bench and the tests
        own = self.device.type == "cuda" and self.config.own_stream
        self.stream = graphstep.training_stream(self.device) if own else None
        self._static: StaticStep | None = None
        # channels_last is faster for convs on CUDA and on x86 CPUs (oneDNN), fp32 and bf16 alike
        self.memory_format = torch.channels_last if self.device.type in ("cuda", "cpu") else torch.contiguous_format
        self.data = data.to(self.device) if data is not None else load_dataset(self.config.dataset, self.device)
        batch_size, n_train = self.config.batch_size, len(self.data.train_y)
        if _number(batch_size) and n_train < batch_size <= MAX_BATCH:  # a learner's small zip may hold fewer images
            batch_size = n_train
        check_batch_size(batch_size, n_train)  # as configure does: a batch of 0 failed at the first step
        self.config = replace(self.config, batch_size=int(batch_size))
        self.model_config = replace(model_config or ResNetConfig(), num_classes=len(self.data.classes))
        self.reset(self.config.seed)

    # --- setting up ------------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, model_config: ResNetConfig | None = None):
        """Fresh weights from `seed`, empty history; the learner's lr, optimizer and batch size are kept."""
        with self.lock:
            if seed is not None:
                check_seed(seed)
                self.config = replace(self.config, seed=int(seed))
            if model_config is not None:
                self.model_config = replace(model_config, num_classes=len(self.data.classes))
            with private_rng(self.config.seed):
                model = ResNet(self.model_config)
            self.model = model.to(self.device, memory_format=self.memory_format)
            self.model_serial = next(_serials)
            self.forward = torch.compile(self.model) if self.config.compile else self.model
            self.layers = self.model.weighted_layers()
            self.weights = [m.weight for m in self.layers.values()]
            self.generator = torch.Generator(self.device).manual_seed(self.config.seed)
            self._order, self._cursor = None, 0
            self._mixed = None  # (x, y, steps left): the learner's own images, mixed into the next batches
            self.step_count = 0
            self.history = History(self.config.history_points)
            self._make_optimizer()
            self._undo = Snapshot()  # what an eager step restores if it diverges

    def _make_optimizer(self):
        c = self.config
        if c.optimizer not in OPTIMIZERS:
            raise UserError(
                f"unknown optimizer {c.optimizer!r}; choose from {list(OPTIMIZERS)}",
                zh=f"未知的优化器 {c.optimizer!r}；可选 {list(OPTIMIZERS)}",
            )
        check_lr(c.lr)
        self._drop_static()
        params = self.model.parameters()
        if self.step_mode == "eager":
            # foreach: one kernel per op for all parameters instead of one per parameter
            flavour = {"lr": c.lr, "foreach": True}
        else:
            # a graph reads the lr from a tensor (changed in place, no new capture) and steps on the device alone
            lr = torch.tensor(c.lr, device=self.device)
            flavour = {"lr": lr, "fused": True, **({"capturable": True} if c.optimizer == "adam" else {})}
        if c.optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, weight_decay=c.weight_decay, **flavour)
        else:
            self.optimizer = torch.optim.SGD(params, momentum=c.momentum, weight_decay=c.weight_decay, **flavour)
            if self.step_mode != "eager":
                # fused SGD takes a step as the first only if no parameter has a momentum buffer, and fails if some
                # have one and some not (a projection's first gradient after its shortcut comes back on). A zero
                # buffer is what the first step would make: 0.9 * 0 + g = g.
                for p in self.model.parameters():
                    self.optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
        self.optimizer_serial = next(_serials)

    def configure(self, lr: float | None = None, optimizer: str | None = None, batch_size: int | None = None):
        """Change lr, optimizer or batch size between steps; weights and history stay."""
        with self.lock:
            if lr is not None and lr != self.config.lr:
                check_lr(lr)
                self.config = replace(self.config, lr=float(lr))
                for group in self.optimizer.param_groups:
                    if torch.is_tensor(group["lr"]):
                        group["lr"].fill_(float(lr))  # read by the captured step: no new capture
                    else:
                        group["lr"] = float(lr)
                self.history.add_event(self.step_count, "lr", f"lr = {lr:g}")
            if optimizer is not None and optimizer != self.config.optimizer:
                old = self.config
                self.config = replace(self.config, optimizer=optimizer)
                try:
                    self._make_optimizer()  # a new optimizer starts with empty moments
                except ValueError:
                    self.config = old
                    raise
                self.history.add_event(self.step_count, "optimizer", f"optimizer = {optimizer}")
            if batch_size is not None and batch_size != self.config.batch_size:
                check_batch_size(batch_size, len(self.data.train_y))
                self.config = replace(self.config, batch_size=int(batch_size))
                self.history.add_event(self.step_count, "batch", f"batch size = {batch_size}")

    @property
    def version(self) -> tuple:
        """Changes whenever what the model computes may have: a new model, a step, a shortcut switch. What is
        computed from the model (a prediction's feature maps) can be kept until it does."""
        return self.model_serial, self.step_count, tuple(self.model.shortcuts)

    # --- shortcuts -------------------------------------------------------------------------------------------
    @property
    def shortcuts(self) -> list[bool]:
        return self.model.shortcuts

    def set_shortcut(self, on: bool, block: int | None = None):
        """Switch one block's shortcut (1-based) or all of them; the weights are untouched."""
        with self.lock:
            before = self.model.shortcuts
            self.model.set_shortcut(on, block)
            if self.model.shortcuts != before:
                where = "all blocks" if block is None else f"block {block}"
                self.history.add_event(self.step_count, "shortcut", f"shortcut {'on' if on else 'off'}: {where}")

    # --- training --------------------------------------------------------------------------------------------
    @contextmanager
    def _on_stream(self):
        """Run the block's GPU work on the session's own stream, after whatever the caller's stream queued before
        it; and the caller's stream's later work after the block's (most blocks end with a host read anyway, but
        not an undo after a rejected step or an out-of-memory error): a prediction then reads finished weights, and
        memory the block used is reused only after it."""
        if self.stream is None:
            yield
            return
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        try:
            with torch.cuda.stream(self.stream):
                yield
        finally:
            caller.wait_stream(self.stream)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _forward_backward_step(self, x, y):
        self.model.train()
        with self._autocast():
            try:
                logits = self.forward(x)
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 -- a compiler failure must not cost the learner the step
                if self.forward is self.model:
                    raise
                log.warning("torch.compile failed (%s); training eagerly", e)
                self.forward = self.model
                logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return logits, loss

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of an epoch-wise random permutation, augmented on the device."""
        start, b = self._advance(), self.config.batch_size
        draws = augment_draws(b, self.device, self.generator) if self.config.augment else None
        return self._batch(self._order[start : start + b], draws)

    def _advance(self) -> int:
        """Where the next batch starts in the epoch's permutation of the training images, drawn anew when what is left
        of it is shorter than a batch (in place: a captured step reads it)."""
        n, b = len(self.data.train_y), self.config.batch_size
        if self._order is None or self._cursor + b > n:
            if self._order is None:
                self._order = torch.randperm(n, device=self.device, generator=self.generator)
            else:
                torch.randperm(n, generator=self.generator, out=self._order)
            self._cursor = 0
        self._cursor += b
        return self._cursor - b

    def _batch(self, idx: torch.Tensor, draws: tuple | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The training images at `idx` (B,), the learner's own mixed in, shifted and flipped by `draws` (None: as
        they are): (B, 3, 32, 32) float32 in the session's memory format, and (B,) labels. No random numbers and no
        host sync: a captured step makes its batch with it too."""
        x, y = normalize(self.data.train_x[idx]), self.data.train_y[idx]  # (B, 3, 32, 32) float32, (B,)
        if self._mixed is not None:  # the learner's images take the last places of the batch
            mx, my, left = self._mixed
            b, m = len(y), min(len(my), len(y))
            x, y = torch.cat([x[: b - m], mx[:m]]), torch.cat([y[: b - m], my[:m]])
            self._mixed = (mx, my, left - 1) if left > 1 else None
        if draws is not None:
            x = shift_and_flip(x, *draws)
        return x.contiguous(memory_format=self.memory_format), y

    def _live_tensors(self) -> list[torch.Tensor]:
        """Everything a step changes, tracked weights first: parameters, BN statistics, optimizer moments."""
        tracked = {id(w) for w in self.weights}
        params = self.weights + [p for p in self.model.parameters() if id(p) not in tracked]
        state = [t for p in params for t in self.optimizer.state.get(p, {}).values() if torch.is_tensor(t)]
        return [p.detach() for p in params] + list(self.model.buffers()) + state

    def _eager_stats(self, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        """An eager step: the undo snapshot, forward, backward, optimizer; its statistics as floats."""
        had_state = bool(self.optimizer.state)
        self._undo.take(self._live_tensors())
        try:
            logits, loss = self._forward_backward_step(x, y)
        except torch.OutOfMemoryError:
            # a batch too big for the accelerator: undo whatever ran (BN statistics), free the step's memory
            self._undo.restore()
            if not had_state:
                self.optimizer.state.clear()
            self.optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                graphstep.empty_cache()
            raise
        return self._stats(self._undo.copies[: len(self.weights)], logits, loss, y).cpu().tolist()

    def _stats(self, start: list[torch.Tensor], logits, loss, y) -> torch.Tensor:
        """A step's statistics in one float32 tensor on the device, so the host waits for it once: loss, accuracy,
        the largest update/weight ratio, each layer's gradient norm, and with telemetry each layer's weight norm
        and update ratio (3 + k, or 3 + 3k for k layers). `start`: the tracked weights before the step."""
        # The divergence guard is part of the algorithm: each layer's update/weight ratio is computed at every
        # step and its max decides. Telemetry only decides what else comes back to be recorded.
        weight_norms = torch.stack(torch._foreach_norm(start))  # (k,)
        moved = torch._foreach_sub([w.detach() for w in self.weights], start)
        ratios = torch.stack(torch._foreach_norm(moved)) / weight_norms.clamp_min(1e-12)  # (k,)
        grads = [w.grad if w.grad is not None else torch.zeros_like(w) for w in self.weights]
        accuracy = (logits.argmax(1) == y).float().mean()
        parts = [torch.stack([loss.detach().float(), accuracy, ratios.max()]), torch.stack(torch._foreach_norm(grads))]
        if self.config.telemetry:
            parts += [weight_norms, ratios]
        return torch.cat([p.float() for p in parts])

    def _static_step(self, shape: tuple, makes_batch: bool) -> StaticStep | None:
        """The static (on CUDA: captured) step for a batch of `shape`, made when anything it is specific to changed;
        None where this step must be eager: eager mode (also after a failed capture), the optimizer's first step
        (its state does not exist yet to be captured), a batch above graphstep.MAX_CAPTURED_BATCH. `makes_batch`:
        the step makes the session's next batch itself (else it is copied in)."""
        if self.step_mode == "eager" or not self.optimizer.state or shape[0] > graphstep.MAX_CAPTURED_BATCH:
            return None
        key = StepKey(
            shape, tuple(self.model.shortcuts), self.optimizer_serial, len(self.optimizer.state),
            self.config.telemetry, makes_batch, makes_batch and self.config.augment,
        )  # fmt: skip
        if self._static is None or self._static.key != key:
            self._drop_static()
            self._static = StaticStep(self, key, capture=self.step_mode == "graph")
            self.captures += 1
        return self._static

    def _drop_static(self) -> None:
        if self._static is not None:
            self._static.close(self)
            self._static = None

    def _stands(self, stats: torch.Tensor) -> torch.Tensor:
        """The divergence guard on the device: () bool, true if the step may stand (everything finite, no layer
        moved by more than MAX_UPDATE_RATIO times its weights). `_rejection` says the same on the host, and why."""
        return torch.isfinite(stats).all() & (stats[2] <= MAX_UPDATE_RATIO)

    @staticmethod
    def _rejection(stats: list[float]) -> str | None:
        if not all(math.isfinite(v) for v in stats):
            return f"{'loss' if not math.isfinite(stats[0]) else 'gradients or weights'} not finite"
        if stats[2] > MAX_UPDATE_RATIO:
            return f"an update {stats[2]:.0f}x the size of its layer's weights"
        return None

    def _launch(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None, static: bool = True) -> tuple:
        """Start one optimizer step on (x, y), or on the session's next batch if x is None. Returns (stats, undo): a
        static step's statistics as a device tensor not yet read, ending in 1.0 if the step stood (it undid itself
        on the device if not), with undo None; an eager step's as floats, with what the host must run to undo it if
        `_records` rejects it. static=False: always eager (a one-off batch, such as the learner's own image, is not
        worth a capture). The session's own batches are made inside a static step unless the learner's images are
        being mixed into them."""
        makes_batch = x is None and self._mixed is None
        shape = (self.config.batch_size, *self.data.train_x.shape[1:]) if x is None else tuple(x.shape)
        runner = self._static_step(shape, makes_batch) if static else None
        if x is None and (runner is None or not makes_batch):
            x, y = self.next_batch()
        elif x is None:
            start = self._advance()  # before the try below: an error here has not touched the weights
        if runner is None:
            had_state = set(self.optimizer.state)  # parameters, by identity
            stats = self._eager_stats(x, y)

            def undo():  # as StaticStep.restore: no state for a parameter whose first gradient this step was
                self._undo.restore()
                for p in [p for p in self.optimizer.state if p not in had_state]:
                    del self.optimizer.state[p]
                self.optimizer.zero_grad(set_to_none=True)

            return stats, undo
        try:
            stats = runner.run(self, start=start) if makes_batch else runner.run(self, x, y)
        except torch.OutOfMemoryError:
            runner.restore(self)
            self._drop_static()
            graphstep.empty_cache()
            raise
        undo = partial(runner.restore, self) if runner.new_state(self) else None
        if runner.failed:  # the capture failed: this step stands or not as ever; from now on, eager steps
            log.warning("session %s steps eagerly from now on", id(self))
            self.step_mode = "eager"
            self._drop_static()
        return stats, undo

    def _records(self, launched: list[tuple]) -> list[dict]:
        """Read launched steps (one wait for all the device's) and count them, in order: each step's record, or
        {"rejected": reason} for a step that was undone."""
        waiting = [stats for stats, _ in launched if torch.is_tensor(stats)]
        rows = iter(torch.stack(waiting).tolist() if waiting else [])  # the one host sync
        records = []
        for stats, undo in launched:
            if torch.is_tensor(stats):
                *stats, stood = next(rows)
                reason = None if stood else self._rejection(stats) or "diverged"
            else:
                reason = self._rejection(stats)
            records.append(self._record(stats, reason, undo))
        return records

    def _record(self, stats: list[float], reason: str | None, undo) -> dict:
        if reason:
            if undo is not None:
                undo()
            return {
                "step": self.step_count,  # as it was: the step did not count
                "rejected": f"step {self.step_count + 1} rejected: {reason} (lr {self.config.lr:g} too large?); "
                "weights restored",
            }
        self.step_count += 1
        names, k = list(self.layers), len(self.weights)
        record = {
            "step": self.step_count,
            "loss": stats[0],
            "acc": stats[1],
            "lr": self.config.lr,
            "shortcuts": self.model.shortcuts,
            "grad_norm": dict(zip(names, stats[3 : 3 + k])),
        }
        if self.config.telemetry:
            record["weight_norm"] = dict(zip(names, stats[3 + k : 3 + 2 * k]))
            record["update_ratio"] = dict(zip(names, stats[3 + 2 * k :]))
        return record

    def train_step(self, x: torch.Tensor, y: torch.Tensor, static: bool = True) -> dict:
        """One optimizer step on (x, y), read at once. Returns the step's record, or {"rejected": reason} if it was
        undone. static=False: always eager (see `_launch`)."""
        with self.lock, self._on_stream():
            return self._records([self._launch(x, y, static)])[0]

    def step(self, n: int = 1, batch=None) -> dict:
        """Take n training steps. Returns {"step", "done", "rejected", "messages", "last"} as plain data.
        `batch`: a function giving each step's (x, y) instead of `next_batch` (twins share one batch stream).
        Static steps are launched back to back and read together at the end, so the host prepares the next batch
        while the device computes; they are read earlier only where an outcome must be known first: an
        evaluation's step, a step the host must undo itself."""
        done, messages, last, launched = 0, [], None, []
        every = self.config.eval_every

        def settle():
            nonlocal done, last
            reading = launched[:]
            launched.clear()  # read once, even if reading them fails
            records = self._records(reading)
            for record in records:
                if "rejected" in record:
                    messages.append(record["rejected"])
                    self.history.add_event(record["step"], "rejected", record["rejected"])
                    continue
                done += 1
                self._count(record)  # an evaluation's step is only ever the last record read (see below)
                last = record

        with self.lock, self._on_stream():
            try:
                for _ in range(int(n)):
                    stats, undo = self._launch(*(batch() if batch else ()))
                    launched.append((stats, undo))
                    # read now if this step may be the one an evaluation follows (all launched steps standing)
                    evaluation = every and (self.step_count + len(launched)) // every > self.step_count // every
                    if evaluation or undo is not None:
                        settle()
            finally:
                settle()
        return {"step": self.step_count, "done": done, "rejected": len(messages), "messages": messages, "last": last}

    def _count(self, record: dict) -> None:
        """A step that stood, into the history; and the held-out evaluation, every `eval_every` steps."""
        self.history.add_step(record)
        every = self.config.eval_every
        if every and record["step"] % every == 0:
            self.history.add_eval({"step": record["step"], **self.evaluate(self.config.eval_size)})

    def evaluate(self, size: int | None = None, batch: int = 500) -> dict:
        """Loss and accuracy on the first `size` held-out images (all of them if None), in eval mode."""
        return self.held_out(lambda x: [self.model(x)], size, batch)[0]

    @torch.inference_mode()
    def held_out(
        self, outputs: Callable[[torch.Tensor], Iterable[torch.Tensor]], size: int | None = None, batch: int = 500
    ) -> list[dict]:
        """{"loss", "acc"} of each of the logits `outputs(x)` gives, on the first `size` held-out images (all if
        None), `batch` images at a time, in eval mode (the model's mode is put back); `outputs` may run the model
        in any way (twin.lesion_accuracies: with one block bypassed at a time). One loop for every evaluation."""
        with self.lock:
            x_all, y_all = self.data.test_x[:size], self.data.test_y[:size]
            was_training = self.model.training
            self.model.eval()
            sums = []  # per output: (summed loss, correct count), on the device until the end
            try:
                for i in range(0, len(y_all), batch):
                    x = normalize(x_all[i : i + batch]).contiguous(memory_format=self.memory_format)
                    y = y_all[i : i + batch]
                    with self._autocast():
                        logits = [out.float() for out in outputs(x)]  # each (B, classes)
                    rows = [
                        torch.stack([F.cross_entropy(o, y, reduction="sum"), (o.argmax(1) == y).sum().float()])
                        for o in logits
                    ]
                    sums = [a + b for a, b in zip(sums, rows)] if sums else rows
            finally:
                self.model.train(was_training)
            n = max(len(y_all), 1)
            totals = torch.stack(sums).tolist() if sums else [[0.0, 0.0]]  # no images: nothing lost, nothing right
            return [{"loss": loss / n, "acc": correct / n} for loss, correct in totals]

    def gradients(self, x: torch.Tensor, y: torch.Tensor, shortcuts: list[bool] | None = None) -> dict:
        """Loss and per-layer gradients for one labelled batch (the notebook's experiment), without a step.

        `shortcuts` overrides the switches for this computation only. fp32, train mode, as the notebook does.
        Returns {"loss", "grad_norm": {layer: float}, "grads": {layer: tensor on the CPU}}.
        """
        with self.lock:
            before = self.model.shortcuts
            # train-mode BN moves its running statistics on this forward pass: they are put back after it
            with restored(list(self.model.buffers())):
                try:
                    if shortcuts is not None:
                        for i, on in enumerate(shortcuts, 1):
                            self.model.set_shortcut(on, i)
                    self.model.train()
                    self.model.zero_grad(set_to_none=True)
                    x = x.to(self.device).contiguous(memory_format=self.memory_format)
                    loss = F.cross_entropy(self.model(x), y.to(self.device))
                    loss.backward()
                    grads = self._layer_grads()
                finally:
                    for i, on in enumerate(before, 1):
                        self.model.set_shortcut(on, i)
                    self.model.zero_grad(set_to_none=True)
            return {"loss": loss.item(), "grad_norm": {n: g.norm().item() for n, g in grads.items()}, "grads": grads}

    def teach(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """One optimizer step on the learner's own labelled image(s), recorded in the history like any step.
        Returns the step's record plus "grads": {layer: the weight gradient this step applied, on the CPU}."""
        with self.lock:
            x = x.to(self.device).contiguous(memory_format=self.memory_format)
            record = self.train_step(x, y.to(self.device), static=False)
            if "rejected" in record:
                self.history.add_event(self.step_count, "rejected", record["rejected"])
                return record
            self._count(record)
            self.history.add_event(self.step_count, "teach", "a step on your image")
            return {**record, "grads": self._layer_grads()}

    def _layer_grads(self) -> dict[str, torch.Tensor]:
        # a projection whose shortcut is off gets no gradient: zero, not missing
        return {
            n: (m.weight.grad if m.weight.grad is not None else torch.zeros_like(m.weight)).float().cpu()
            for n, m in self.layers.items()
        }

    def mix_in(self, x: torch.Tensor, y: torch.Tensor, steps: int = 20) -> None:
        """Put the learner's labelled image(s) into each of the next `steps` training batches."""
        # copies made on the session's stream, which frees them when it has made their last batch
        with self.lock, self._on_stream():
            self._mixed = (x.to(self.device, copy=True), y.to(self.device, copy=True), int(steps))
            self.history.add_event(self.step_count, "teach", f"your image mixed into the next {steps} batches")

    def summary(self) -> dict:
        """What the UI shows beside the charts, as plain data."""
        return {
            "step": self.step_count,
            "device": str(self.device),
            "precision": self.precision,
            "dataset": self.config.dataset,
            "classes": list(self.data.classes),
            "depth": self.model_config.depth,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "shortcuts": self.model.shortcuts,
            "step_mode": self.step_mode,
            "config": asdict(self.config),
        }


def _number(value) -> bool:
    """A real number, and not a bool (True would pass for 1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def merge_reports(reports: list[dict], step: int) -> dict:
    """Consecutive `Session.step` reports -> one report of them all, in the same shape, at `step`."""
    last = [r["last"] for r in reports if r["last"] is not None]
    return {
        "step": step,
        "done": sum(r["done"] for r in reports),
        "rejected": sum(r["rejected"] for r in reports),
        "messages": [m for r in reports for m in r["messages"]],
        "last": last[-1] if last else None,
    }


def check_lr(lr: float) -> None:
    if not _number(lr) or not 0 < lr <= 1e4:
        raise UserError(
            f"learning rate must be a number in (0, 10000]; got {lr!r}",
            zh=f"学习率必须是 (0, 10000] 之间的数；收到的是 {lr!r}",
        )


MAX_BATCH = 4096  # images per step at most: more is no lesson, and a room's memory


def check_seed(seed: int) -> None:
    """A seed every generator the session seeds takes (torch's overflow error past 64 bits is no message for a
    learner who typed a long number)."""
    if not _number(seed) or seed != int(seed) or not 0 <= seed < 2**32:
        raise UserError(
            f"the seed must be a whole number from 0 to {2**32 - 1}; got {seed!r}",
            zh=f"随机种子必须是 0 到 {2**32 - 1} 之间的整数；收到的是 {seed!r}",
        )


def check_batch_size(batch_size: int, n_train: int) -> None:
    top = min(n_train, MAX_BATCH)
    if not _number(batch_size) or batch_size != int(batch_size) or not 1 <= batch_size <= top:
        raise UserError(
            f"batch size must be a whole number from 1 to {top}; got {batch_size!r}",
            zh=f"批大小必须是 1 到 {top} 之间的整数；收到的是 {batch_size!r}",
        )
