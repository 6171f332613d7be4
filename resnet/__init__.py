"""ResNet Playground's engine: a small ResNet with switchable shortcuts, a watched training session, data, inference.

Plain PyTorch and plain data out; the Gradio app (app.py) only lays it out.
"""

from . import hub  # noqa: F401 -- registers the Hub datasets by name
from .data import DATASETS, Dataset, load_dataset
from .model import ResNet, ResNetConfig, cifar_config, notebook_config
from .session import Session, TrainConfig

__all__ = [
    "DATASETS",
    "Dataset",
    "ResNet",
    "ResNetConfig",
    "Session",
    "TrainConfig",
    "cifar_config",
    "load_dataset",
    "notebook_config",
]
