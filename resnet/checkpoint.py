"""Checkpoints a learner can hand on: safetensors weights + a config.json with everything needed to rebuild.

`huggingface_hub.PyTorchModelHubMixin` does the format, so the same directory loads from disk, from a Hub repo
id, or pushes to one. The config carries the architecture, the class names and the shortcut switches; loading
is strict, so a checkpoint of another architecture fails with a message instead of loading half its weights.
"""

import zipfile
from dataclasses import replace
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin

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


def load(source: str | Path, device="cpu", token: str | None = None) -> HubResNet:
    """Load from a local directory or a Hub repo id, strictly; returns the model in eval mode."""
    try:
        with private_rng():  # builds a randomly initialised net first, then loads the weights over it
            model = HubResNet.from_pretrained(str(source), strict=True, map_location=str(device), token=token)
    except (RuntimeError, TypeError, KeyError) as e:
        # RuntimeError: missing/unexpected/mis-shaped tensors; TypeError/KeyError: a config.json of another kind
        raise CheckpointError(f"{source} is not a checkpoint of this app's ResNet: {str(e).splitlines()[0]}") from e
    if len(model.classes) != model.config.num_classes:
        raise CheckpointError(f"{source}: {len(model.classes)} class names for {model.config.num_classes} outputs")
    return model


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


def unpack(zip_path: str | Path, directory: str | Path) -> Path:
    """A downloaded checkpoint zip -> its two files in `directory`; any other entry is refused, never extracted."""
    directory = Path(directory)
    try:
        with zipfile.ZipFile(zip_path) as z:
            names = set(z.namelist())
            if names != {"model.safetensors", "config.json"}:
                raise CheckpointError(
                    f"a checkpoint zip holds exactly model.safetensors and config.json; this one "
                    f"holds {sorted(names)[:5]}"
                )
            for name in names:
                (directory / name).write_bytes(z.read(name))
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"that file is not a zip ({e})") from e
    return directory


def pack(directory: str | Path) -> Path:
    """The checkpoint in `directory` as one zip beside it, for a download button."""
    directory = Path(directory)
    out = directory.with_suffix(".zip")
    with zipfile.ZipFile(out, "w") as z:
        for name in ("model.safetensors", "config.json"):
            z.write(directory / name, name)
    return out
