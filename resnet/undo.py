"""The undo of a step: copies of the tensors a step changes, put back when the step must not stand.

A learner who types lr=1000 loses one step, not the run. The host can decide (`restore`), or the device can
(`keep_if`): a captured step undoes itself without the host reading anything, so steps need not wait for the host.
"""

from contextlib import contextmanager

import torch


class Snapshot:
    """Copies of some tensors and two ways to put them back: `restore()`, the undo of a step decided on the host, and
    `keep_if(ok)`, the same undo decided on the device by a 0-dim bool tensor (no host sync: a captured step undoes
    itself). The copies are views into one flat buffer per dtype: once taken, a snapshot allocates nothing, and
    keep_if is a few kernels, not one per tensor. `take` reuses the copies when the tensors match them in shape."""

    def __init__(self, tensors: list[torch.Tensor] | None = None):
        self.tensors: list[torch.Tensor] = []
        self.copies: list[torch.Tensor] = []
        self._groups: list[tuple[torch.Tensor, list[int]]] = []  # per (dtype, device): flat copies, tensor indices
        if tensors is not None:
            self.take(tensors)

    def take(self, tensors: list[torch.Tensor]) -> None:
        def layout(ts):
            return [(t.shape, t.dtype, t.device) for t in ts]

        if layout(self.copies) != layout(tensors):  # the first snapshot, or the optimizer's state has appeared
            groups: dict[tuple, list[int]] = {}
            for i, t in enumerate(tensors):
                groups.setdefault((t.dtype, t.device), []).append(i)
            self.copies, self._groups = [None] * len(tensors), []
            for (dtype, device), index in groups.items():
                flat = torch.empty(sum(tensors[i].numel() for i in index), dtype=dtype, device=device)
                for i, part in zip(index, flat.split([tensors[i].numel() for i in index])):
                    self.copies[i] = part.view(tensors[i].shape)
                self._groups.append((flat, index))
        torch._foreach_copy_(self.copies, tensors)
        self.tensors = tensors

    def restore(self) -> None:
        torch._foreach_copy_(self.tensors, self.copies)

    def keep_if(self, ok: torch.Tensor) -> None:
        """Keep the tensors' new values where `ok` (a 0-dim bool tensor on their device) is true, else put the
        copies back; NaN-safe (a where, not arithmetic on the difference)."""
        for flat, index in self._groups:
            tensors = [self.tensors[i] for i in index]
            chosen = torch.where(ok, torch.cat([t.reshape(-1) for t in tensors]), flat)  # (total numel,)
            parts = chosen.split([t.numel() for t in tensors])
            torch._foreach_copy_(tensors, [part.view(t.shape) for part, t in zip(parts, tensors)])


@contextmanager
def restored(tensors: list[torch.Tensor]):
    """Run the block, then put `tensors` back as they were, even if it failed (train-mode BN moves its running
    statistics on any forward pass, step or not)."""
    snapshot = Snapshot(tensors)
    try:
        yield
    finally:
        snapshot.restore()
