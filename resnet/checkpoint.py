"""Checkpoints a learner can hand on: safetensors weights + a config.json with everything needed to rebuild.

`huggingface_hub.PyTorchModelHubMixin` writes the format and pushes it. A checkpoint from outside is untrusted:
its config.json is read and checked against `CheckpointLimits` before anything is built, an uploaded zip is read
in memory with its member sizes checked first, and a Hub repo id is only ever an id, its files' sizes checked
before they are downloaded. Loading is strict: another architecture fails with a message, never half-loaded.
"""

import json
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import safetensors.torch
import torch
from huggingface_hub import HfApi, PyTorchModelHubMixin, hf_hub_download

from .errors import UserError
from .model import ResNet, ResNetConfig, private_rng


class CheckpointError(UserError):
    """A checkpoint we cannot use; the message is meant for the user."""


class HubResNet(ResNet, PyTorchModelHubMixin, library_name="resnet-playground", tags=["resnet", "residual"]):
    """A ResNet whose __init__ arguments are plain JSON, so the mixin can write them to config.json."""

    def __init__(self, architecture: dict, classes: list[str], shortcuts: list[bool], dataset: str = ""):
        super().__init__(ResNetConfig(**architecture))
        self.classes, self.dataset = list(classes), dataset
        for i, on in enumerate(shortcuts, 1):
            self.set_shortcut(on, i)


def to_hub(model: ResNet, classes, dataset: str = "") -> HubResNet:
    """A CPU copy of a live model that knows how to save or push itself, with its classes and switches."""
    with private_rng():  # its random init is overwritten at once; it must not draw from a seeded learner's RNG
        hub = HubResNet(model.config.to_dict(), list(classes), model.shortcuts, dataset)
    hub.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return hub


def save(model: ResNet, directory: str | Path, classes, dataset: str = "") -> Path:
    """Write model.safetensors + config.json to `directory` (created if needed)."""
    to_hub(model, classes, dataset).save_pretrained(directory)
    return Path(directory)


@dataclass(frozen=True)
class CheckpointLimits:
    """What an untrusted checkpoint may ask the server to build and read; anything more is refused unread."""

    max_config_bytes: int = 100_000  # config.json (this app writes ~0.5 kB)
    max_weights_bytes: int = 20_000_000  # model.safetensors (the notebook's net: 2.4 MB; ResNet-56: 3.4 MB)
    max_stages: int = 4  # stages of blocks (the notebook's net has 2, the paper's CIFAR nets 3)
    max_blocks: int = 18  # blocks per stage (ResNet-110 has 18)
    max_width: int = 512  # channels of the stem or any stage
    max_classes: int = 1000  # outputs of the classifier
    in_channels: tuple[int, ...] = (1, 3)  # grayscale or RGB


LIMITS = CheckpointLimits()
FILES = ("config.json", "model.safetensors")  # a checkpoint is these two; a download also carries a README.md card
# a Hub repo id as the Hub spells one: owner/name, never a path (from_pretrained would try a server folder first)
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def read_config(raw: bytes, limits: CheckpointLimits = LIMITS) -> dict:
    """config.json -> HubResNet's arguments, checked against `limits` before anything is built."""
    if len(raw) > limits.max_config_bytes:
        raise CheckpointError(f"config.json is {len(raw):,} bytes; a checkpoint's is under {limits.max_config_bytes:,}")
    try:
        config = json.loads(raw)
        arch, classes, shortcuts = config["architecture"], config["classes"], config["shortcuts"]
        widths, blocks = list(arch["widths"]), list(arch["blocks"])
        numbers = [arch["in_channels"], arch["num_classes"], arch["stem_width"], *widths, *blocks]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"config.json is not this app's checkpoint config ({type(e).__name__}: {e})") from None
    if not all(type(n) is int for n in numbers) or not all(isinstance(c, str) for c in classes):
        raise CheckpointError("config.json: sizes must be whole numbers and class names text")
    problems = []
    if not 1 <= len(widths) == len(blocks) <= limits.max_stages:
        problems.append(f"1 to {limits.max_stages} stages, each with a width and a block count")
    if not all(1 <= n <= limits.max_blocks for n in blocks):
        problems.append(f"1 to {limits.max_blocks} blocks per stage")
    if not all(1 <= w <= limits.max_width for w in [arch["stem_width"], *widths]):
        problems.append(f"widths from 1 to {limits.max_width} channels")
    if arch["in_channels"] not in limits.in_channels:
        problems.append(f"in_channels one of {list(limits.in_channels)}")
    if not 2 <= arch["num_classes"] <= limits.max_classes or len(classes) != arch["num_classes"]:
        problems.append(f"2 to {limits.max_classes} classes, one name per output")
    if not isinstance(shortcuts, list) or len(shortcuts) != sum(blocks) or not all(type(b) is bool for b in shortcuts):
        problems.append("one shortcut switch (true/false) per block")
    if problems:
        raise CheckpointError("This checkpoint is outside what the app builds: it needs " + "; ".join(problems) + ".")
    return {
        "architecture": dict(arch),
        "classes": classes,
        "shortcuts": shortcuts,
        "dataset": str(config.get("dataset", "")),
    }


def build(config_raw: bytes, weights_raw: bytes, limits: CheckpointLimits = LIMITS) -> HubResNet:
    """A checkpoint's two files, as bytes -> the model, strictly: every tensor present and of the right shape."""
    if len(weights_raw) > limits.max_weights_bytes:
        raise CheckpointError(
            f"model.safetensors is {len(weights_raw) / 1e6:.0f} MB; the limit is "
            f"{limits.max_weights_bytes / 1e6:.0f} MB"
        )
    kwargs = read_config(config_raw, limits)
    try:
        state = safetensors.torch.load(weights_raw)
    except Exception as e:  # noqa: BLE001 -- safetensors raises its own error kinds for a damaged file
        raise CheckpointError(f"model.safetensors could not be read ({type(e).__name__})") from None
    with private_rng():  # a random init first (overwritten at once); it must not draw from a learner's seeded RNG
        model = HubResNet(**kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # missing, unexpected or mis-shaped tensors
        raise CheckpointError(
            f"not a checkpoint of this app's ResNet: its weights do not fit its config.json ({_first_problem(e)})"
        ) from None
    return model.eval()


def _first_problem(e: RuntimeError) -> str:
    """load_state_dict's message lists every tensor; the first line after its heading is enough to say why."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[1][:200] if len(lines) > 1 else lines[0][:200]


def load(directory: str | Path, limits: CheckpointLimits = LIMITS) -> HubResNet:
    """A checkpoint folder on this machine (the shipped model, or one `save` wrote)."""
    directory = Path(directory)
    raw = {}
    for name in FILES:
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{directory.name}: no {name}")
        if path.stat().st_size > limits.max_config_bytes + limits.max_weights_bytes:
            raise CheckpointError(f"{name} is too large for a checkpoint of this app")
        raw[name] = path.read_bytes()
    return build(raw["config.json"], raw["model.safetensors"], limits)


def load_upload(zip_path: str | Path, limits: CheckpointLimits = LIMITS) -> HubResNet:
    """A checkpoint zip (from Download) -> the model, read in memory: member sizes are checked before reading, and
    nothing is extracted, so no folder is left behind."""
    try:
        with zipfile.ZipFile(zip_path) as z:
            members = {info.filename: info for info in z.infolist()}
            if not set(FILES) <= set(members) or not set(members) <= {*FILES, "README.md"}:
                raise CheckpointError(
                    f"a checkpoint zip holds exactly config.json and model.safetensors; "
                    f"this one holds {sorted(members)[:5]}"
                )
            caps = {"config.json": limits.max_config_bytes, "model.safetensors": limits.max_weights_bytes}
            for name, cap in caps.items():
                if members[name].file_size > cap:
                    raise CheckpointError(
                        f"{name} unpacks to {members[name].file_size / 1e6:.1f} MB; the limit is {cap / 1e6:.1f} MB"
                    )
            raw = {name: z.read(name) for name in FILES}
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"that file is not a zip ({e})") from None
    return build(raw["config.json"], raw["model.safetensors"], limits)


def check_repo_id(repo_id: str) -> str:
    repo_id = (repo_id or "").strip()
    if not REPO_ID.match(repo_id) or ".." in repo_id:
        raise CheckpointError(f"{repo_id[:100]!r} is not a Hugging Face repo id; type one like you/resnet-playground")
    return repo_id


def load_repo(
    repo_id: str, revision: str | None = None, token: str | None = None, limits: CheckpointLimits = LIMITS
) -> HubResNet:
    """A checkpoint from a Hub model repo: the id is checked (never read as a path on the server), the two files'
    sizes come from the Hub's metadata before anything is downloaded, and only those two files are fetched."""
    repo_id = check_repo_id(repo_id)
    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True, token=token)
        sizes = {s.rfilename: s.size for s in info.siblings or []}
        missing = [name for name in FILES if name not in sizes]
        if missing:
            raise CheckpointError(f"{repo_id} is not a checkpoint of this app: it has no {', '.join(missing)}")
        caps = {"config.json": limits.max_config_bytes, "model.safetensors": limits.max_weights_bytes}
        for name, cap in caps.items():
            if sizes[name] is None or sizes[name] > cap:
                raise CheckpointError(
                    f"{repo_id}'s {name} is {(sizes[name] or 0) / 1e6:.1f} MB; the limit is {cap / 1e6:.1f} MB"
                )
        raw = {
            name: Path(hf_hub_download(repo_id, name, revision=info.sha, token=token)).read_bytes() for name in FILES
        }
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 -- offline, not found, private, rate-limited: say which kind, plainly
        raise CheckpointError(
            f"could not fetch {repo_id} from the Hugging Face Hub ({type(e).__name__}); check the id and the network"
        ) from None
    return build(raw["config.json"], raw["model.safetensors"], limits)


def load_into(target: ResNet, source: ResNet) -> None:
    """Copy a loaded checkpoint's weights and shortcut states into a live model of the same architecture."""
    if target.config.to_dict() != source.config.to_dict():
        raise CheckpointError(
            f"the checkpoint is a different architecture ({source.config}) than this session's "
            f"({target.config}); reset the session with that architecture first"
        )
    with torch.no_grad():
        target.load_state_dict(source.state_dict(), strict=True)
    for i, on in enumerate(source.shortcuts, 1):
        target.set_shortcut(on, i)


def session_from(model: HubResNet, config=None):
    """A training session that continues from a loaded checkpoint, on the dataset it was trained on."""
    from .data import DATASETS
    from .engine import Session, TrainConfig

    config = config or TrainConfig()
    dataset = model.dataset if model.dataset in DATASETS else config.dataset
    session = Session(replace(config, dataset=dataset), model.config)
    if list(session.data.classes) != model.classes:
        raise CheckpointError(
            f"the checkpoint's classes ({', '.join(model.classes)}) are not those of the "
            f"'{dataset}' dataset; load it where that dataset is available"
        )
    with session.lock:
        load_into(session.model, model)
        session.history.add_event(0, "checkpoint", "loaded from a checkpoint")
    return session


def pack(directory: str | Path) -> Path:
    """The checkpoint in `directory` as one zip beside it, for a download button."""
    directory = Path(directory)
    out = directory.with_suffix(".zip")
    with zipfile.ZipFile(out, "w") as z:
        for name in ("model.safetensors", "config.json"):
            z.write(directory / name, name)
    return out
