"""Datasets for the playground: the embedded "shapes" set, a registry for others, and GPU-side augmentation.

"shapes" is drawn procedurally (no download, works offline) as ten shapes a person can sketch with a mouse,
rendered with enough variety and clutter that a ResNet has to train for a few hundred steps to learn them.
"""

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import UserError


class DataError(UserError):
    """A dataset we cannot load; the message is meant for the user."""


MEAN, STD = 0.5, 0.25  # one normalisation for every dataset, so a drawing needs no per-dataset statistics


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) uint8 -> float32 in about [-2, 2], on the same device."""
    return (images_uint8.float() / 255 - MEAN) / STD


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """normalize's inverse: (B, C, H, W) float -> uint8 pixels."""
    return (x * STD + MEAN).clamp(0, 1).mul(255).round().byte()


@dataclass(frozen=True, eq=False)  # eq=False: compare by identity; == on tensors has no single truth value
class Dataset:
    name: str  # registry name, shown in the UI
    classes: tuple[str, ...]  # class names, index = label
    train_x: torch.Tensor  # (N, 3, 32, 32) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor  # (M, 3, 32, 32) uint8, the held-out split
    test_y: torch.Tensor  # (M,) int64

    def __post_init__(self):
        # a builder registered by someone else fails here, not deep inside a training step
        for x, y in ((self.train_x, self.train_y), (self.test_x, self.test_y)):
            if x.dtype != torch.uint8 or x.shape[1:] != (3, 32, 32) or y.dtype != torch.int64 or y.shape != x.shape[:1]:
                raise ValueError(
                    f"dataset {self.name!r}: want (N,3,32,32) uint8 images and (N,) int64 labels, "
                    f"got {tuple(x.shape)} {x.dtype} and {tuple(y.shape)} {y.dtype}"
                )

    def to(self, device) -> "Dataset":
        t = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "test_x", "test_y")}
        return Dataset(self.name, self.classes, **t)


# --- the shapes ------------------------------------------------------------------------------------------------
# Ten shapes that stay distinct drawn as outlines or filled. Left out: "ring" (a circle drawn with a pen already is
# one) and "diamond" (a turned square). Plus and cross differ by a 45 degree turn, so both turn at most 15 degrees.
# Each is a distance in a shape space where it spans about [-1, 1], x right and y down as in an image.


def _segments(*points) -> torch.Tensor:
    """(S, 2, 2) start and end of each segment of the polyline through points."""
    p = torch.tensor(points, dtype=torch.float32)
    return torch.stack([p[:-1], p[1:]], 1)


def _dist_segments(q: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Distance from points q (B, P, 2) to segments (S, 2, 2), or to per-image segments (B, 1, S, 2, 2): (B, P, S)."""
    ax, ay = seg[..., 0, 0], seg[..., 0, 1]
    ex, ey = seg[..., 1, 0] - ax, seg[..., 1, 1] - ay  # (S,) or (B, 1, S)
    wx, wy = q[..., 0, None] - ax, q[..., 1, None] - ay  # (B, P, S); x and y apart: no slow size-2 reductions
    t = ((wx * ex + wy * ey) / (ex * ex + ey * ey)).clamp_(0, 1)  # where along the segment the nearest point is
    return torch.hypot(wx.sub_(t * ex), wy.sub_(t * ey))


def _polygon(*corners) -> Callable[[torch.Tensor], torch.Tensor]:
    """Signed distance to a polygon (negative inside); inside is where a ray to the right crosses an odd count."""
    seg = _segments(*corners, corners[0])
    a, b = seg[:, 0], seg[:, 1]

    def sd(q):
        x, y = q[..., 0, None], q[..., 1, None]  # (B, P, 1)
        x_cross = a[:, 0] + (y - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])  # (B, P, S)
        inside = (((a[:, 1] > y) != (b[:, 1] > y)) & (x < x_cross)).sum(-1) % 2 == 1
        return torch.where(inside, -1.0, 1.0) * _dist_segments(q, seg).amin(-1)

    return sd


def _strokes(*polylines) -> Callable[[torch.Tensor], torch.Tensor]:
    seg = torch.cat([_segments(*p) for p in polylines])
    return lambda q: _dist_segments(q, seg).amin(-1)


def _heart(q: torch.Tensor) -> torch.Tensor:
    # Inigo Quilez's exact heart (y up, spanning y in [0, 1.2]), flipped and shifted onto the origin
    x, y = q[..., 0].abs() * 0.75, 0.9 - q[..., 1] * 0.75
    lobe = torch.hypot(x - 0.25, y - 0.75) - math.sqrt(2) / 4
    m = (x + y).clamp(min=0) / 2
    tip = torch.minimum(torch.hypot(x, y - 1), torch.hypot(x - m, y - m)) * torch.sign(x - y)
    return torch.where(x + y > 1, lobe, tip) / 0.75


def _crescent(q: torch.Tensor) -> torch.Tensor:
    bite = torch.tensor([0.5, 0.0])  # centre of the disc of radius 0.7 cut from the unit disc
    return torch.maximum(q.norm(dim=-1) - 1, 0.7 - (q - bite).norm(dim=-1))


_STAR = [(r * math.sin(k * math.pi / 5), -r * math.cos(k * math.pi / 5)) for k, r in enumerate([1, 0.42] * 5)]
_D = math.sqrt(0.5)

# name: (distance in shape space, closed (has an inside) or open strokes, largest turn in degrees)
_CLASSES = {
    "circle": (lambda q: q.norm(dim=-1) - 0.9, True, 180),  # with a random aspect: the ellipse a hand draws
    "square": (_polygon((-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)), True, 20),  # turned 45 it is a diamond
    "triangle": (_polygon((0, -1), (0.9, 0.6), (-0.9, 0.6)), True, 180),
    "star": (_polygon(*_STAR), True, 180),
    "heart": (_heart, True, 25),  # upside down it stops being a heart
    "crescent": (_crescent, True, 180),  # the moon, any way up
    "plus": (_strokes([(-1, 0), (1, 0)], [(0, -1), (0, 1)]), False, 15),
    "cross": (_strokes([(-_D, -_D), (_D, _D)], [(-_D, _D), (_D, -_D)]), False, 15),
    "arrow": (_strokes([(-1, 0), (1, 0)], [(0.45, -0.5), (1, 0), (0.45, 0.5)]), False, 180),  # points anywhere
    "lightning": (_strokes([(0.45, -1), (-0.4, 0.05), (0.4, -0.05), (-0.45, 1)]), False, 25),
}
SHAPES = tuple(_CLASSES)


def _render(labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One image (3, 32, 32) uint8 per label, all at once; every random draw comes from g, in a fixed order."""
    n = len(labels)

    def u(*shape):  # uniform [0, 1) draws, always from g
        return torch.rand(*shape, generator=g)

    yx = torch.stack(torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij"), -1)
    pix = yx.flip(-1).reshape(1, 1024, 2) + 0.5  # (1, P, 2) pixel centres as (x, y), P = 32 * 32

    # background: mostly a white-ish drawing pad, otherwise any colour; a faint gradient either way
    light = u(n, 1, 1) < 0.6
    bg = torch.where(light, 0.85 + 0.15 * u(n, 1, 1) + 0.04 * (u(n, 3, 1) - 0.5), u(n, 3, 1))  # (n, 3, 1)
    img = bg + 0.2 * (u(n, 3, 2) - 0.5) @ (pix[0].T / 32 - 0.5)  # (n, 3, P)

    def paint(coverage, colour):  # coverage (n, P) in [0, 1], colour (n, 3, 1); in place, as copies are slow
        img.lerp_(colour.expand_as(img), coverage[:, None])

    # clutter under the shape: up to 3 faint stray lines and 3 small blobs, so no single stroke gives the class away
    lines = _dist_segments(pix, u(n, 1, 3, 2, 2) * 36 - 2)  # (n, P, 3); the ends may lie outside the image
    for k in range(3):
        alpha = (u(n, 1) < 0.3) * (0.2 + 0.5 * u(n, 1))
        paint(alpha * (0.7 + 0.4 * u(n, 1) - lines[..., k]).clamp(0, 1), u(n, 3, 1))  # 0.4-1.2 px wide
        blob = (pix[0] - u(n, 1, 2) * 32).norm(dim=-1) - (0.7 + 1.3 * u(n, 1))  # (n, P), radius 0.7-2 px
        paint((u(n, 1) < 0.4) * (0.5 - blob).clamp(0, 1), u(n, 3, 1))

    # ink: on a light pad half the time a dark pen, else any colour, pushed away from the background's
    # brightness where the two would be hard to tell apart
    colour = torch.where(light & (u(n, 1, 1) < 0.5), 0.3 * u(n, 1, 1).expand(n, 3, 1), u(n, 3, 1))
    lum_bg, lum = bg.mean(1, keepdim=True), colour.mean(1, keepdim=True)
    pushed = torch.where(lum_bg > 0.5, 0.35 * colour, 0.6 + 0.4 * colour)
    colour = torch.where((lum - lum_bg).abs() > 0.3, colour, pushed)
    stroke = 1.0 + 2.0 * u(n, 1) ** 2  # pen width in px, mostly thin: a 400 px drawing downscaled to 32 px
    marker = 3 + 2 * u(n, 1)  # width of "filled" open strokes (plus, arrow, ...), which have no inside
    filled = u(n, 1) < 0.3  # outlines dominate: that is what a pen draws

    # pose: pixel p -> shape space q = R(-angle) (p - centre) / size / aspect, then a smooth wobble
    size = 8 + 7 * u(n, 1, 1)  # half-extent in px
    centre = 16 + (16 - size) * 0.8 * (2 * u(n, 1, 2) - 1)  # (n, 1, 2), keeps the shape mostly inside
    aspect = torch.exp(0.2 * (2 * u(n, 1, 2) - 1))  # up to 20% wider than tall, or the reverse
    max_turn = torch.tensor([math.radians(c[2]) for c in _CLASSES.values()])[labels]
    angle = max_turn[:, None, None] * (2 * u(n, 1, 1) - 1)
    cos, sin, rel = angle.cos(), angle.sin(), (pix - centre) / size  # rel: (n, P, 2)
    q = torch.cat([cos * rel[..., :1] + sin * rel[..., 1:], cos * rel[..., 1:] - sin * rel[..., :1]], -1) / aspect
    q += 0.07 * u(n, 1, 2) * torch.sin(3 * q.flip(-1) + 6.3 * u(n, 1, 2))  # a hand's imperfection

    dist = torch.empty(n, 1024)  # (n, P) distance in px from each pixel to the ink, negative on it
    for c, (distance, closed, _) in enumerate(_CLASSES.values()):  # every image of a class in one pass
        i = (labels == c).nonzero()[:, 0]
        d = distance(q[i]) * size[i, 0]  # (n_c, P) in px
        if closed:  # filled: the inside; outline: a band of the pen's width around the edge
            dist[i] = torch.where(filled[i], d, d.abs() - stroke[i] / 2)
        else:
            dist[i] = d - torch.where(filled[i], marker[i], stroke[i]) / 2
    paint((0.5 - dist).clamp(0, 1), colour)  # coverage ramps over 1 px: anti-aliased edges

    img += 0.06 * u(n, 1, 1) * torch.randn(n, 1, 1024, generator=g)  # grey sensor noise of varying strength
    return img.clamp_(0, 1).mul_(255).round_().to(torch.uint8).reshape(n, 3, 32, 32)


def _split(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n images and their labels: balanced (equal counts when 10 divides n), shuffled."""
    labels = (torch.arange(n) % len(SHAPES))[torch.randperm(n, generator=g)]
    # 500 at a time: small temporaries are reused by malloc; one pass over 10000 images takes 2-3x the CPU
    return torch.cat([_render(chunk, g) for chunk in labels.split(500)]), labels


def make_shapes(n_train: int = 10000, n_test: int = 2000, seed: int = 0) -> Dataset:
    """The embedded dataset; train and test come from different generator streams of the same seed."""
    if n_train < 1 or n_test < 1:
        raise ValueError(f"need at least one image per split, got n_train={n_train}, n_test={n_test}")
    # stream 2 * seed + split: no seed's test set is another seed's training set
    (train_x, train_y), (test_x, test_y) = (
        _split(n, torch.Generator().manual_seed(2 * seed + k)) for k, n in enumerate((n_train, n_test))
    )
    return Dataset("shapes", SHAPES, train_x, train_y, test_x, test_y)


# --- registry -------------------------------------------------------------------------------------------------
DATASETS = {"shapes": make_shapes}  # name -> builder() returning a Dataset
_CACHE: dict[tuple[str, str], Dataset] = {}  # (name, device) -> the one copy every session shares; read-only
# One lock per name: two sessions starting at once must not build the same dataset twice, and a slow build (a
# Hub download that stalls) must not hold up a session that wants another dataset, or one already built.
_LOCKS: dict[str, threading.Lock] = {}
_LOCK = threading.Lock()  # guards _LOCKS; held for a dict lookup, never during a build


def _lock(name: str) -> threading.Lock:
    with _LOCK:
        return _LOCKS.setdefault(name, threading.Lock())


def register(name: str, builder: Callable[[], Dataset]) -> None:
    """Make builder() loadable as name; it runs once, on the first load_dataset(name)."""
    with _lock(name):  # after any build of the old builder, whose data must not land in the cache afterwards
        DATASETS[name] = builder  # and a re-registered name must not serve the old data:
        for key in [k for k in list(_CACHE) if k[0] == name]:  # list(): another name's build may add a key meanwhile
            del _CACHE[key]


def load_dataset(name: str = "shapes", device="cpu") -> Dataset:
    """The dataset called name on device, built on first use and then shared: never write into its tensors."""
    if name not in DATASETS:
        raise UserError(
            f"unknown dataset {name!r}; choose from {sorted(DATASETS)}",
            zh=f"未知的数据集 {name!r}；可选 {sorted(DATASETS)}",
        )
    device = str(torch.empty(0, device=device).device)  # "cuda" -> "cuda:0": one key per real device
    if (built := _CACHE.get((name, device))) is not None:  # the common case, a Reset: no lock to wait on
        return built
    with _lock(name):
        if (name, "cpu") not in _CACHE:
            _CACHE[name, "cpu"] = DATASETS[name]()
        if (name, device) not in _CACHE:
            _CACHE[name, device] = _CACHE[name, "cpu"].to(device)
        return _CACHE[name, device]


# --- augmentation -------------------------------------------------------------------------------------------
def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random horizontal flip and shift by up to 4 px per sample of a float batch (B, C, 32, 32), on x's device.

    Both are one gather from the reflect-padded batch: a flipped crop reads its columns right to left.
    Not torchvision.transforms.v2: its RandomCrop and RandomHorizontalFlip draw one crop and one coin for the whole
    batch, from the global RNG (no generator); a loop of v2.functional crops per image keeps the seed but is slower
    than this gather on the CPU (1.7x, measured) and costs a kernel or two per image and a host sync on a GPU.
    """
    return shift_and_flip(x, *augment_draws(len(x), x.device, generator))


def augment_draws(b: int, device, generator: torch.Generator | None = None, out=(None, None)) -> tuple:
    """`augment`'s random numbers for a batch of b: crop offsets (2, B, 1) in 0..8 and coins (B, 1) in [0, 1),
    drawn in this order (into the tensors `out`, if given: a captured step reads them there)."""
    shifts = torch.randint(0, 9, (2, b, 1), generator=generator, device=device, out=out[0])
    coins = torch.rand(b, 1, generator=generator, device=device, out=out[1])
    return shifts, coins


def shift_and_flip(x: torch.Tensor, shifts: torch.Tensor, coins: torch.Tensor) -> torch.Tensor:
    """`augment` given its draws: no random numbers, no host sync (a CUDA graph can hold it)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")  # (B, C, H+8, W+8)
    dy, dx = shifts  # crop offsets, (B, 1) each
    flip = coins < 0.5
    rows = dy + torch.arange(h, device=x.device)  # (B, H)
    cols = dx + torch.where(flip, torch.arange(w - 1, -1, -1, device=x.device), torch.arange(w, device=x.device))
    where = (rows[:, :, None] * (w + 8) + cols[:, None, :]).view(b, 1, h * w)  # (B, 1, H*W) into each padded plane
    # torch.gather over flat planes: 2x faster on the CPU than indexing with four broadcast index tensors
    return padded.flatten(2).gather(2, where.expand(b, c, h * w)).view(b, c, h, w)
