"""Real pictures: CIFAR-10, MNIST and Fashion-MNIST from the Hugging Face Hub (a learner's own zip: resnet.zipdata).

Hub sets come as parquet files (an image column of encoded PNG bytes, a label column); they are downloaded with
`huggingface_hub` into its cache, decoded once into a uint8 tensor file, and loaded from that afterwards. Every
image, Hub or zip, becomes 32x32 RGB through inference.to_square, the path a prediction takes: grayscale repeated to 3
channels (every model and drawing works with every dataset), MNIST's 28x28 padded, larger images letterboxed.
"""

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm  # comes with huggingface-hub; the app shows it as a progress bar (gr.Progress(track_tqdm))

from .data import DataError, Dataset, register
from .inference import to_square

CACHE = Path(os.environ.get("PLAYGROUND_CACHE", Path.home() / ".cache" / "resnet-playground"))
HUB_TIMEOUT = 10  # s the Hub may take to answer; left to itself, hf_hub_download retries a silent Hub for 6 minutes


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


def decode_parquet(path: str | Path, image_column: str) -> tuple[torch.Tensor, ...]:
    """A parquet file of encoded images and labels -> (N, 3, 32, 32) uint8 and (N,) int64 tensors."""
    import pyarrow.parquet as pq  # only needed for Hub datasets

    table = pq.read_table(path, columns=[image_column, "label"])
    images, labels = table.column(image_column).to_pylist(), table.column("label").to_pylist()
    out = np.empty((len(images), 32, 32, 3), np.uint8)
    for i, cell in enumerate(tqdm(images, desc=f"decoding {Path(path).name}", unit="img", mininterval=0.5)):
        out[i] = np.asarray(to_square(cell["bytes"]))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels, dtype=torch.int64)


def _why(e: BaseException) -> tuple[str, str]:
    """Why a download failed, in English and Chinese. hf_hub_download wraps a 429 or a 500 from the Hub in an error
    that says to check the connection: the Hub's own answer, found in the chain, is what the learner should read."""
    while getattr(e, "response", None) is None and e.__cause__ is not None:
        e = e.__cause__
    response = getattr(e, "response", None)
    if response is not None:
        said = " ".join(str(getattr(e, "server_message", None) or "").split())[:200]  # the Hub's words, one line
        answer = f"{response.status_code} {response.reason_phrase}" + (f" — {said}" if said else "")
        if response.status_code == 429 or response.status_code >= 500:  # busy or down: it passes
            return f"the Hub answered {answer}; try again in a minute", f"Hub 回应 {answer}；请稍等一分钟再试"
        return f"the Hub answered {answer}", f"Hub 回应 {answer}"
    if type(e).__name__.endswith("Timeout"):  # ConnectTimeout, ReadTimeout, ... of httpx or httpx2, either client
        return "the Hub did not answer in time; try again later", "Hub 没有及时回应；请稍后再试"
    return "this machine may be offline", "这台机器可能没有联网"


def _download(spec: HubDataset, filename: str, local_dir) -> str:
    """The file's local path: from the cache without the network, else downloaded after one quick question."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import LocalEntryNotFoundError

    where = {"repo_type": "dataset", "revision": spec.revision}
    try:
        return hf_hub_download(spec.repo, filename, local_dir=local_dir, local_files_only=True, **where)
    except LocalEntryNotFoundError:
        pass
    # one HEAD, no retries: a Hub that does not answer is reported in HUB_TIMEOUT s, not after hf_hub_download's
    # own retries (6 HEADs of 60 s each)
    get_hf_file_metadata(hf_hub_url(spec.repo, filename, **where), timeout=HUB_TIMEOUT)
    return hf_hub_download(spec.repo, filename, local_dir=local_dir, etag_timeout=HUB_TIMEOUT, **where)


def load_hub(name: str, local_dir: str | Path | None = None) -> Dataset:
    """Download (or find in the cache) and decode a Hub dataset; the decoded tensors are cached on disk."""
    try:  # huggingface-hub's HTTP client (httpx before 2.0): its HTTPError is a timeout, a refusal or an error status
        from httpx2 import HTTPError
    except ImportError:
        from httpx import HTTPError

    spec = HUB_DATASETS[name]
    cached = CACHE / f"{name}-{spec.revision}.pt"
    if cached.exists():
        return Dataset(name=name, classes=spec.classes, **torch.load(cached, weights_only=True))
    tensors = {}
    for split, filename in (("train", spec.train), ("test", spec.test)):
        try:
            path = _download(spec, filename, local_dir)
        except (HTTPError, OSError) as e:  # LocalEntryNotFoundError is an OSError; a timed-out GET comes as it is
            en, zh = _why(e)
            raise DataError(
                f"{name} could not be fetched from the Hugging Face Hub ({type(e).__name__}): {en}. "
                "The embedded 'shapes' dataset works without a network.",
                zh=f"无法从 Hugging Face Hub 获取 {name}（{type(e).__name__}）：{zh}。内置的 shapes 数据集不需要网络。",
            ) from e
        tensors[f"{split}_x"], tensors[f"{split}_y"] = decode_parquet(path, spec.image)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, cached)
    return Dataset(name=name, classes=spec.classes, **tensors)


for _name in HUB_DATASETS:
    register(_name, functools.partial(load_hub, _name))
