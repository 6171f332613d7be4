"""Real pictures: CIFAR-10, MNIST and Fashion-MNIST from the Hugging Face Hub, and a learner's own zip of folders.

Hub sets come as parquet files (an image column of encoded PNG bytes, a label column); they are downloaded with
`huggingface_hub` into its cache, decoded once into a uint8 tensor file, and loaded from that afterwards. Every
image, Hub or zip, becomes 32x32 RGB through inference.to_square, the path a prediction takes: grayscale repeated to 3
channels (every model and drawing works with every dataset), MNIST's 28x28 padded, larger images letterboxed.
A zip is read in memory (never extracted), so a hostile archive name cannot write anywhere.
"""

import functools
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm  # comes with huggingface-hub; the app shows it as a progress bar (gr.Progress(track_tqdm))

from .data import Dataset, register
from .errors import UserError
from .inference import ImageError, to_square

CACHE = Path(os.environ.get("PLAYGROUND_CACHE", Path.home() / ".cache" / "resnet-playground"))
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class HubDataset:
    repo: str  # dataset repo id on the Hub
    train: str  # parquet file of the training split, inside the repo
    test: str  # parquet file of the held-out split
    image: str  # column of {"bytes", "path"} structs
    classes: tuple[str, ...]  # label index -> name
    revision: str = "main"  # a branch, tag or commit sha: set a sha to freeze the data


HUB_DATASETS = {
    "cifar10": HubDataset(
        "uoft-cs/cifar10",
        "plain_text/train-00000-of-00001.parquet",
        "plain_text/test-00000-of-00001.parquet",
        "img",
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
    "mnist": HubDataset(
        "ylecun/mnist",
        "mnist/train-00000-of-00001.parquet",
        "mnist/test-00000-of-00001.parquet",
        "image",
        tuple(str(d) for d in range(10)),
    ),
    "fashion_mnist": HubDataset(
        "zalando-datasets/fashion_mnist",
        "fashion_mnist/train-00000-of-00001.parquet",
        "fashion_mnist/test-00000-of-00001.parquet",
        "image",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
}


class DataError(UserError):
    """A dataset we cannot load; the message is meant for the user."""


def decode_parquet(path: str | Path, image_column: str) -> tuple[torch.Tensor, ...]:
    """A parquet file of encoded images and labels -> (N, 3, 32, 32) uint8 and (N,) int64 tensors."""
    import pyarrow.parquet as pq  # only needed for Hub datasets

    table = pq.read_table(path, columns=[image_column, "label"])
    images, labels = table.column(image_column).to_pylist(), table.column("label").to_pylist()
    out = np.empty((len(images), 32, 32, 3), np.uint8)
    for i, cell in enumerate(tqdm(images, desc=f"decoding {Path(path).name}", unit="img", mininterval=0.5)):
        out[i] = np.asarray(to_square(cell["bytes"]))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels, dtype=torch.int64)


def load_hub(name: str, local_dir: str | Path | None = None) -> Dataset:
    """Download (or find in the cache) and decode a Hub dataset; the decoded tensors are cached on disk."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    spec = HUB_DATASETS[name]
    cached = CACHE / f"{name}-{spec.revision}.pt"
    if cached.exists():
        return Dataset(name=name, classes=spec.classes, **torch.load(cached, weights_only=True))
    tensors = {}
    for split, filename in (("train", spec.train), ("test", spec.test)):
        try:
            path = hf_hub_download(
                spec.repo, filename, repo_type="dataset", revision=spec.revision, local_dir=local_dir
            )
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
            raise DataError(
                f"{name} could not be fetched from the Hugging Face Hub ({type(e).__name__}): this "
                "machine may be offline. The embedded 'shapes' dataset works without a network."
            ) from e
        tensors[f"{split}_x"], tensors[f"{split}_y"] = decode_parquet(path, spec.image)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, cached)
    return Dataset(name=name, classes=spec.classes, **tensors)


MAX_UPLOAD_MB = 10  # the largest file a learner may upload (the app's max_file_size): zips, checkpoints, images
MB = 2**20  # bytes in the app's "mb": gradio counts max_file_size="10mb" as 10 * 2**20 bytes


@dataclass(frozen=True)
class ZipLimits:
    max_bytes: int = MAX_UPLOAD_MB * MB  # size of the uploaded archive: any zip the app lets through
    max_files: int = 5_000  # entries in it
    max_unpacked: int = 200 * MB  # bytes once decompressed (a zip bomb is small packed)
    min_per_class: int = 2  # images per class: one to learn from and one held out


def load_zip(path: str | Path, limits: ZipLimits = ZipLimits(), held_out: float = 0.2) -> Dataset:
    """A zip of class folders (cat/1.png, dog/x.jpg, ...) -> a Dataset; anything odd is refused with the reason."""
    path = Path(path)
    if path.stat().st_size > limits.max_bytes:
        raise DataError(f"The zip is {path.stat().st_size / MB:.1f} MB; the limit is {limits.max_bytes / MB:g} MB.")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"That file is not a zip archive we can read ({e}).") from e
    with archive:
        entries = [e for e in archive.infolist() if not e.is_dir()]
        if len(entries) > limits.max_files:
            raise DataError(f"The zip holds {len(entries)} files; the limit is {limits.max_files}.")
        if sum(e.file_size for e in entries) > limits.max_unpacked:
            raise DataError(f"The zip unpacks to more than {limits.max_unpacked / MB:.0f} MB.")
        by_class: dict[str, list[np.ndarray]] = {}
        for e in entries:
            parts = e.filename.replace("\\", "/").split("/")
            if e.filename.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
                raise DataError(f"Refused: the entry {e.filename!r} points outside the archive.")
            if parts[-1].startswith(".") or parts[0] == "__MACOSX":
                continue  # macOS and editor litter
            if Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{e.filename!r} is not an image file; the zip must hold only class folders of images.")
            if len(parts) < 2:
                raise DataError(f"{e.filename!r} is not inside a class folder (expected e.g. cat/{parts[-1]}).")
            try:
                pixels = np.asarray(to_square(archive.read(e)))  # (32, 32, 3) uint8, exactly as predict sees it
            except ImageError as err:
                raise DataError(f"{e.filename!r} could not be read as an image. {err}") from err
            by_class.setdefault(parts[-2], []).append(pixels)
    if len(by_class) < 2:
        raise DataError(f"Found {len(by_class)} class folder(s); at least 2 are needed to learn anything.")
    small = [c for c, imgs in by_class.items() if len(imgs) < limits.min_per_class]
    if small:
        raise DataError(f"Each class needs at least {limits.min_per_class} images; too few in: {', '.join(small)}.")
    classes = tuple(sorted(by_class))
    split = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for label, name in enumerate(classes):
        imgs = by_class[name]
        n_test = max(1, round(len(imgs) * held_out))
        for part, chunk in (("test", imgs[:n_test]), ("train", imgs[n_test:])):
            split[f"{part}_x"] += chunk
            split[f"{part}_y"] += [label] * len(chunk)
    tensors = {
        k: torch.from_numpy(np.stack(v)).permute(0, 3, 1, 2).contiguous()
        if k.endswith("_x")
        else torch.tensor(v, dtype=torch.int64)
        for k, v in split.items()
    }
    return Dataset(name=f"zip:{path.stem}", classes=classes, **tensors)


for _name in HUB_DATASETS:
    register(_name, functools.partial(load_hub, _name))
