"""A small ResNet for 32x32 images whose shortcuts can be switched off and on at any time.

He et al. (2016): a block learns the residual F(x) = H(x) - x and outputs relu(F(x) + x), so a block that has
nothing to add can fall back to the identity, and the gradient reaches early layers through the "+ x" unchanged.
With its shortcut off the same block is the "plain" block relu(F(x)): same weights, no highway. The default
config is the course notebook's network (602,698 parameters); `stages`/`blocks` build the paper's deep
CIFAR nets (6n+2 layers) for plain-vs-residual comparisons.
"""

import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ResNetConfig:
    in_channels: int = 3  # image channels (3: RGB)
    num_classes: int = 10  # outputs of the final linear layer
    stem_width: int = 64  # channels of the 3x3 stem conv
    widths: tuple[int, ...] = (64, 128)  # channels of each stage; every stage after the first halves H and W
    blocks: tuple[int, ...] = (1, 2)  # basic blocks per stage; the notebook has 1 at 64 and 2 at 128 channels
    zero_init_residual: bool = False  # start each residual branch at 0 (last BN gamma = 0): every block is x

    def __post_init__(self):
        # JSON (checkpoints, the Hub) turns tuples into lists
        self.widths, self.blocks = tuple(self.widths), tuple(self.blocks)
        if len(self.widths) != len(self.blocks) or min(self.blocks, default=0) < 1:
            raise ValueError(f"widths {self.widths} and blocks {self.blocks} must have one entry >= 1 per stage")

    @property
    def depth(self) -> int:
        """Weighted layers on the longest path: stem + 2 per block + fc (the paper's 6n+2 for 3 stages)."""
        return 2 + 2 * sum(self.blocks)

    def to_dict(self) -> dict:
        return asdict(self)


def notebook_config() -> ResNetConfig:
    """The course notebook's net: stem 3->64, blocks 64->64, 64->128 (stride 2), 128->128, pool, fc."""
    return ResNetConfig()


def cifar_config(n: int, width: int = 16, num_classes: int = 10) -> ResNetConfig:
    """He et al.'s CIFAR-10 net with 6n+2 layers: 3 stages of n blocks at 16/32/64 channels (n=3: ResNet-20)."""
    w = width
    return ResNetConfig(num_classes=num_classes, stem_width=w, widths=(w, 2 * w, 4 * w), blocks=(n, n, n))


# The nets a learner picks by name: the notebook's, and the paper's CIFAR nets (6n+2 layers, n blocks per stage)
ARCHITECTURES = {"notebook (0.6M parameters)": 0, "ResNet-20": 3, "ResNet-32": 5, "ResNet-56": 9}


def architecture(name: str | None) -> ResNetConfig:
    """The config of a net named in ARCHITECTURES (None: the notebook's)."""
    if name is not None and name not in ARCHITECTURES:
        from .errors import UserError

        raise UserError(
            f"unknown network {name!r}; choose from {list(ARCHITECTURES)}",
            zh=f"未知的网络 {name!r}；可选 {list(ARCHITECTURES)}",
        )
    n = ARCHITECTURES.get(name, 0)
    return cifar_config(n) if n else ResNetConfig()


_init_lock = threading.Lock()


@contextmanager
def private_rng(seed: int | None = None):
    """Random initialisation that leaves torch's global RNG as it was: another learner's seeded Reset may be
    drawing from it at the same moment, and "same seed, same run" must hold. One at a time: fork_rng saves and
    restores the global state, which two threads would interleave."""
    with _init_lock, torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class Projection(nn.Module):
    """The shortcut where the shape changes: a strided 1x1 conv + BN maps x to the residual's shape."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return self.bn(self.conv(x))


class Block(nn.Module):
    """The basic block: out = relu(residual(x) + shortcut(x)), or relu(residual(x)) with the shortcut off."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.residual = nn.Sequential()
        self.residual.add_module("conv1", conv3x3(c_in, c_out, stride))
        self.residual.add_module("bn1", nn.BatchNorm2d(c_out))
        self.residual.add_module("relu", nn.ReLU(inplace=True))
        self.residual.add_module("conv2", conv3x3(c_out, c_out))
        self.residual.add_module("bn2", nn.BatchNorm2d(c_out))
        # identity when shapes match, else a projection (the notebook built one but never used it)
        self.shortcut = Projection(c_in, c_out, stride) if stride != 1 or c_in != c_out else nn.Identity()
        self.shortcut_on = True  # a plain attribute: switching it never touches the weights

    def forward(self, x):
        # in place, on tensors this block made (BN's backward needs its input, not its output, so nothing autograd
        # saved is overwritten): fresh tensors would cost the CPU page faults on every step
        out = self.residual(x)
        if self.shortcut_on:
            out += self.shortcut(x)
        return F.relu(out, inplace=True)


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig | None = None):
        super().__init__()
        self.config = cfg = config or ResNetConfig()
        self.stem = nn.Sequential()
        self.stem.add_module("conv", conv3x3(cfg.in_channels, cfg.stem_width))
        self.stem.add_module("bn", nn.BatchNorm2d(cfg.stem_width))
        self.stem.add_module("relu", nn.ReLU(inplace=True))
        blocks, c_in = [], cfg.stem_width
        for stage, (width, n) in enumerate(zip(cfg.widths, cfg.blocks)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(Block(c_in, width, stride))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, cfg.num_classes)
        if cfg.zero_init_residual:
            for block in self.blocks:
                nn.init.zeros_(block.residual.bn2.weight)

    def forward(self, x):
        x = self.stem(x)  # (B, stem_width, 32, 32)
        x = self.blocks(x)  # (B, widths[-1], 32 / 2**(stages-1), ...)
        return self.head(x)

    def head(self, h):
        """The last block's output -> logits: global average pool (B, widths[-1]), then fc (B, num_classes)."""
        return self.fc(h.mean(dim=(2, 3)))

    def features(self, x) -> dict[str, torch.Tensor]:
        """What each block sees and hands on: {"stem": (B,C,H,W), "block1": ..., ...} for one forward pass."""
        out = {"stem": self.stem(x)}
        h = out["stem"]
        for i, block in enumerate(self.blocks, 1):
            h = out[f"block{i}"] = block(h)
        return out

    # --- shortcuts -----------------------------------------------------------------------------------------
    @property
    def shortcuts(self) -> list[bool]:
        return [b.shortcut_on for b in self.blocks]

    def set_shortcut(self, on: bool, block: int | None = None) -> None:
        """Switch one block's shortcut (block counts from 1, as in the UI) or, with block=None, all of them."""
        targets = self.blocks if block is None else [self.blocks[self._block_index(block)]]
        for b in targets:
            b.shortcut_on = bool(on)

    def _block_index(self, block: int) -> int:
        if not 1 <= block <= len(self.blocks):
            raise ValueError(f"block {block} does not exist; this net has blocks 1..{len(self.blocks)}")
        return block - 1

    # --- names a learner can read ----------------------------------------------------------------------------
    def weighted_layers(self) -> dict[str, nn.Module]:
        """Every conv and linear layer in forward order, by a readable name: stem, block1.conv1, ..., fc."""
        layers = {"stem": self.stem.conv}
        for i, b in enumerate(self.blocks, 1):
            layers[f"block{i}.conv1"] = b.residual.conv1
            layers[f"block{i}.conv2"] = b.residual.conv2
            if isinstance(b.shortcut, Projection):
                layers[f"block{i}.shortcut"] = b.shortcut.conv
        layers["fc"] = self.fc
        return layers


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
