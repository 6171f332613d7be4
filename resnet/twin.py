"""Twin training: one net with shortcuts and its plain twin, same initial weights, same batches, stepped in lockstep.

Any difference between the twins is then the shortcut's doing (He et al. 2016). Also here: where the gradient
reaching a block's input comes from (through the shortcut's "+1" in d(x + F(x))/dx, or through F), each layer's
gradient against its depth, and lesions (Veit et al. 2016): bypass one block at test time and see what is lost.
"""

import threading
from functools import partial

import torch
import torch.nn.functional as F

from .data import Dataset, normalize
from .model import ResNet, ResNetConfig
from .session import History, Session, TrainConfig, merge_reports, restored, thin


class _FixedShortcuts(Session):
    """A Session whose shortcuts are all `SHORTCUT` from every reset on; a twin that switched would be no twin."""

    SHORTCUT: bool = True  # the one setting this twin's shortcuts have

    def reset(self, seed: int | None = None, model_config: ResNetConfig | None = None):
        with self.lock:
            super().reset(seed, model_config)
            self.model.set_shortcut(self.SHORTCUT)  # the model's own switch: Session.set_shortcut refuses

    def set_shortcut(self, on: bool, block: int | None = None):
        if bool(on) != self.SHORTCUT:
            name = "plain" if not self.SHORTCUT else "residual"
            raise ValueError(
                f"the {name} twin's shortcuts stay {'on' if self.SHORTCUT else 'off'}: switching them "
                "would end the comparison; use a Session to switch shortcuts"
            )

    def _launch(self, x: torch.Tensor, y: torch.Tensor, static: bool = True) -> tuple:
        # the model's own switch is still reachable (twin.plain.model.set_shortcut): refuse to train a changed twin
        if self.model.shortcuts != [self.SHORTCUT] * len(self.model.blocks):
            raise ValueError(f"a twin's shortcuts were switched behind its back: {self.model.shortcuts}")
        return super()._launch(x, y, static)


class ResidualTwin(_FixedShortcuts):
    """The twin with every shortcut on, for good."""

    SHORTCUT = True


class PlainTwin(_FixedShortcuts):
    """The twin with every shortcut off, for good: set_shortcut(True) raises ValueError."""

    SHORTCUT = False


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Every parameter and buffer the two share, bit for bit (the twins share all of them)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class TwinSession:
    """A residual Session and its plain twin under one lock; `step` feeds both the very same augmented batches."""

    def __init__(
        self,
        config: TrainConfig | None = None,
        model_config: ResNetConfig | None = None,
        data: Dataset | None = None,
        *,
        probe_size: int = 64,
    ):
        """Arguments as Session's; `probe_size`: training images (the first, unaugmented) routes are measured on."""
        self.lock = threading.RLock()  # shared by both twins: the app's threads can never step one alone
        self.residual = ResidualTwin(config, model_config, data)
        self.plain = PlainTwin(
            self.residual.config, self.residual.model_config, None if data is None else self.residual.data
        )  # already on the device
        self.residual.lock = self.plain.lock = self.lock
        self.probe_size = probe_size
        self._start()

    def _start(self):
        if not same_weights(self.residual.model, self.plain.model):
            raise RuntimeError("the twins did not start from the same weights")  # Session.reset's seeding broke
        self.routes: list[dict] = []  # [{"step", "blocks": gradient_routes(...)}], thinned like a History
        self.route_points = self.residual.history.points

    # --- setting up ------------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, model_config: ResNetConfig | None = None):
        """Both twins afresh from the same seed: identical weights again, empty histories."""
        with self.lock:
            self.residual.reset(seed, model_config)
            self.plain.reset(seed, model_config)
            self._start()

    def configure(self, **changes):
        """lr, optimizer or batch size for both twins (Session.configure's arguments)."""
        with self.lock:
            try:
                self.residual.configure(**changes)
            finally:  # even after a bad value the plain twin mirrors whatever the residual twin now has
                c = self.residual.config
                self.plain.configure(lr=c.lr, optimizer=c.optimizer, batch_size=c.batch_size)

    # --- training --------------------------------------------------------------------------------------------
    def step(self, n: int = 1) -> dict:
        """n twin steps on shared batches. Returns {"residual": report, "plain": report} (Session.step's reports).

        A step one twin rejects (diverged) is skipped by that twin alone, so their step counts can part."""
        reports = {"residual": [], "plain": []}
        with self.lock:
            for _ in range(int(n)):
                batch = self.residual.next_batch()  # (B, 3, 32, 32), (B,): one draw, one augmentation, for both
                for name, session in self.twins.items():
                    reports[name].append(session.step(1, batch=lambda b=batch: b))
                step = self.residual.step_count
                every = self.residual.config.eval_every
                if reports["residual"][-1]["done"] and (step == 1 or (every and step % every == 0)):
                    self.record_routes()
        return {name: merge_reports(reports[name], session.step_count) for name, session in self.twins.items()}

    @property
    def step_count(self) -> int:
        return self.residual.step_count

    @property
    def twins(self) -> dict[str, Session]:
        return {"residual": self.residual, "plain": self.plain}

    @property
    def histories(self) -> dict[str, History]:
        return {name: session.history for name, session in self.twins.items()}

    # --- measurements ----------------------------------------------------------------------------------------
    def probe(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed batch routes are measured on: the first `probe_size` training images, unaugmented."""
        data, s = self.residual.data, self.residual
        x = normalize(data.train_x[: self.probe_size]).contiguous(memory_format=s.memory_format)
        return x, data.train_y[: self.probe_size]

    def record_routes(self) -> dict:
        """Measure the residual twin's gradient routes now and keep them; returns the new record."""
        with self.lock:
            record = {"step": self.residual.step_count, "blocks": gradient_routes(self.residual.model, *self.probe())}
            self.routes.append(record)
            if len(self.routes) > self.route_points:
                self.routes = thin(self.routes, self.route_points)
            return record

    def lesions(self, size: int = 500) -> dict[str, list[dict]]:
        """lesion_accuracies of both twins: {"residual": [...], "plain": [...]}."""
        with self.lock:
            return {"residual": lesion_accuracies(self.residual, size), "plain": lesion_accuracies(self.plain, size)}


# --- where the gradient goes ---------------------------------------------------------------------------------
def gradient_routes(model: ResNet, x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    """For each block with its shortcut on: the norm of dL/d(block input) that arrives through the shortcut and
    through the residual branch, and of the whole gradient, on one batch. Returns [{"block": i (from 1),
    "shortcut", "residual", "total"}] as floats; blocks whose shortcut is off are left out (one route only)."""
    routes = route_gradients(model, x, y)
    norms = torch.stack([g.double().norm() for r in routes for g in r[1:]]).tolist() if routes else []
    return [
        {"block": r[0], "total": norms[3 * k], "residual": norms[3 * k + 1], "shortcut": norms[3 * k + 2]}
        for k, r in enumerate(routes)
    ]


def route_gradients(model: ResNet, x: torch.Tensor, y: torch.Tensor) -> list[tuple]:
    """[(block, dL/dx, residual route, shortcut route)] for the blocks with their shortcut on, x being the block's
    input; tensors shaped like it. `x` (B, 3, 32, 32) normalized images, `y` (B,) labels, as the model takes them.

    With s = residual(x) + shortcut(x) and g = dL/ds, the shortcut route is g^T d shortcut/dx (g itself for an
    identity shortcut: the "+1"), the residual route g^T dF/dx, and the two add up to dL/dx. Train-mode BN, as
    in training; the running statistics, the model's mode and the parameters' .grad are left as they were.
    """
    was_training = model.training
    # train-mode BN moves its running statistics: they are put back after
    with restored(list(model.buffers())), torch.enable_grad():
        try:
            model.train()
            h = model.stem(x)  # (B, stem_width, 32, 32)
            taps = []  # per block: (index, input, what the residual branch reads, what the shortcut reads)
            for i, block in enumerate(model.blocks, 1):
                # an alias per consumer of the input: the gradient that reaches an alias is that route's share
                into_residual, into_shortcut = h.view_as(h), h.view_as(h)
                out = block.residual(into_residual)
                if block.shortcut_on:
                    out = out + block.shortcut(into_shortcut)
                    taps.append((i, h, into_residual, into_shortcut))
                h = F.relu(out)  # as Block.forward
            loss = F.cross_entropy(model.head(h), y)
            wanted = [t for _, *tensors in taps for t in tensors]
            grads = torch.autograd.grad(loss, wanted) if wanted else ()  # one backward pass for every route
        finally:
            model.train(was_training)
    return [(i, *grads[3 * k : 3 * k + 3]) for k, (i, *_) in enumerate(taps)]


# --- lesions ---------------------------------------------------------------------------------------------------
def lesion_accuracies(session: Session, size: int = 500, chunk: int = 200) -> list[dict]:
    """Held-out accuracy with one block bypassed at a time (Veit et al. 2016), eval mode, weights untouched.

    A bypassed block outputs relu(shortcut(x)): its residual branch F is dropped, whatever its switch says, so
    the residual net loses F(x) from x + F(x) and the plain net gets the same cut, its block replaced by the
    shortcut path it never trained (identity, or an untrained projection). Returns [{"block": None, "acc",
    "loss"} for the intact net, then {"block": i, "acc", "loss"} for i = 1..blocks], on the first `size` images.
    """
    rows = session.held_out(partial(_lesioned_logits, session.model), size, chunk)
    return [{"block": k or None, **row} for k, row in enumerate(rows)]


def _lesioned_logits(model: ResNet, x: torch.Tensor):
    """Logits of the intact net, then of the net without block 1, 2, ...; the shared prefix is computed once."""
    inputs = [model.stem(x)]  # inputs[i]: what block i+1 reads, (B, C, H, W)
    for block in model.blocks:
        inputs.append(block(inputs[-1]))
    yield model.head(inputs[-1])
    for i, cut in enumerate(model.blocks):
        h = F.relu(cut.shortcut(inputs[i]))  # the block without its residual branch
        for block in model.blocks[i + 1 :]:
            h = block(h)
        yield model.head(h)


# --- depth ----------------------------------------------------------------------------------------------------
def layer_depth_norms(record: dict) -> list[dict]:
    """A step record's gradient norms on the longest path, in forward order, with their depth (layer index):
    stem = 1, block i's conv1 and conv2 = 2i and 2i + 1, fc = last. Projection shortcuts sit beside that path
    and are left out (the plain twin's get no gradient at all)."""
    names = [n for n in record["grad_norm"] if not n.endswith(".shortcut")]
    return [{"depth": d, "layer": n, "grad_norm": record["grad_norm"][n]} for d, n in enumerate(names, 1)]
