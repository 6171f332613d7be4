"""Checkpoints never disturb another learner: building one draws nothing from torch's global random numbers."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from resnet import checkpoint
from resnet.checkpoint import CheckpointError
from resnet.model import ResNet, ResNetConfig


def test_saving_and_loading_a_checkpoint_leaves_the_global_rng_as_it_was(tmp_path):
    # a Download or Load during another learner's seeded Reset must not change that learner's run
    model = ResNet(ResNetConfig())
    before = torch.random.get_rng_state()
    hub = checkpoint.to_hub(model, [str(i) for i in range(10)], "shapes")
    checkpoint.save(model, tmp_path / "ckpt", hub.classes, "shapes")
    checkpoint.load(tmp_path / "ckpt")
    assert torch.equal(torch.random.get_rng_state(), before)


CLASSES = [str(i) for i in range(10)]


def saved(tmp_path, model=None, **change) -> tuple[bytes, bytes]:
    """A real checkpoint's two files, with config.json's fields changed as given."""
    checkpoint.save(model or ResNet(ResNetConfig()), tmp_path / "ckpt", CLASSES, "shapes")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_bytes())
    for key, value in change.items():
        section = config["architecture"] if key in config["architecture"] else config
        section[key] = value
    return json.dumps(config).encode(), (tmp_path / "ckpt" / "model.safetensors").read_bytes()


@pytest.mark.parametrize(
    "change, word",
    [
        ({"widths": [64] * 5, "blocks": [1] * 5}, "stages"),
        ({"blocks": [1, 19]}, "blocks per stage"),
        ({"stem_width": 100_000}, "widths"),
        ({"in_channels": 7}, "in_channels"),
        ({"num_classes": 1_000_000}, "classes"),
        ({"classes": ["only one name"]}, "classes"),
        ({"shortcuts": [True]}, "shortcut"),
        ({"widths": "64"}, "whole numbers"),
    ],
)
def test_an_untrusted_config_outside_the_limits_is_refused_before_anything_is_built(tmp_path, change, word):
    config, weights = saved(tmp_path, **change)
    with pytest.raises(CheckpointError, match=word):
        checkpoint.build(config, weights)


def test_a_config_that_is_not_json_or_too_big_is_refused(tmp_path):
    _, weights = saved(tmp_path)
    with pytest.raises(CheckpointError, match="not this app's checkpoint config"):
        checkpoint.build(b"{not json", weights)
    with pytest.raises(CheckpointError, match="config.json is"):
        checkpoint.build(b" " * 200_000, weights)


def zipped(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_an_uploaded_zip_loads_in_memory_and_its_members_are_capped_before_reading(tmp_path):
    config, weights = saved(tmp_path)
    model = checkpoint.load_upload(zipped(tmp_path / "ok.zip", {"config.json": config, "model.safetensors": weights}))
    assert model.classes == CLASSES
    bomb = zipped(tmp_path / "bomb.zip", {"config.json": config, "model.safetensors": b"\0" * 30_000_000})
    with pytest.raises(CheckpointError, match="unpacks to 30.0 MB"):  # a few kB packed; never read
        checkpoint.load_upload(bomb)
    extra = zipped(tmp_path / "extra.zip", {"config.json": config, "model.safetensors": weights, "run.sh": b"rm"})
    with pytest.raises(CheckpointError, match="holds exactly config.json and model.safetensors"):
        checkpoint.load_upload(extra)


@pytest.mark.parametrize("text", ["/etc/passwd", "../secrets", "assets/../app.py", "a/b/c", "", "you/na me"])
def test_a_repo_id_is_never_a_path_on_the_server(text):
    with pytest.raises(CheckpointError, match="not a Hugging Face repo id"):
        checkpoint.load_repo(text)


def test_a_repo_shaped_like_a_local_folder_is_fetched_from_the_hub_not_read_from_disk():
    # "assets/shapes-resnet" is a checkpoint folder on this server, and a valid repo id; from_pretrained would load
    # the folder. Offline, the Hub cannot be reached: the learner is told so, and the folder is never read.
    root = Path(__file__).resolve().parent.parent
    code = (
        "import os, sys; os.chdir(sys.argv[1]); from resnet import checkpoint\n"
        "try:\n    checkpoint.load_repo('assets/shapes-resnet')\nexcept checkpoint.CheckpointError as e:\n    print(e)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code, str(root)], env=env, capture_output=True, text=True, timeout=60)
    assert "could not fetch assets/shapes-resnet from the Hugging Face Hub" in out.stdout, out.stderr[-500:]
