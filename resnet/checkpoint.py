"""Checkpoints a learner can hand on: safetensors weights + a config.json with everything needed to rebuild.

`huggingface_hub.PyTorchModelHubMixin` does the format, so the same directory loads from disk, from a Hub repo
id, or pushes to one. The config carries the architecture, the class names and the shortcut switches; loading
is strict, so a checkpoint of another architecture fails with a message instead of loading half its weights.
"""

from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin

from .model import ResNet, ResNetConfig


class CheckpointError(ValueError):
    """A checkpoint we cannot use; the message is meant for the user."""


class HubResNet(ResNet, PyTorchModelHubMixin, library_name="resnet-playground", tags=["resnet", "residual"]):
    """A ResNet whose __init__ arguments are plain JSON, so the mixin can write them to config.json."""

    def __init__(self, architecture: dict, classes: list[str], shortcuts: list[bool], dataset: str = ""):
        super().__init__(ResNetConfig(**architecture))
        self.classes, self.dataset = list(classes), dataset
        for i, on in enumerate(shortcuts, 1):
            self.set_shortcut(on, i)


def save(model: ResNet, directory: str | Path, classes, dataset: str = "") -> Path:
    """Write model.safetensors + config.json to `directory` (created if needed)."""
    hub = HubResNet(model.config.to_dict(), list(classes), model.shortcuts, dataset)
    hub.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    hub.save_pretrained(directory)
    return Path(directory)


def load(source: str | Path, device="cpu", token: str | None = None) -> HubResNet:
    """Load from a local directory or a Hub repo id, strictly; returns the model in eval mode."""
    try:
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
        raise CheckpointError(f"the checkpoint is a different architecture ({source.config}) than this session's "
                              f"({target.config}); reset the session with that architecture first")
    with torch.no_grad():
        target.load_state_dict(source.state_dict(), strict=True)
    for i, on in enumerate(source.shortcuts, 1):
        target.set_shortcut(on, i)
