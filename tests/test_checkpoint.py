"""Checkpoints never disturb another learner: building one draws nothing from torch's global random numbers."""

import torch

from resnet import checkpoint
from resnet.model import ResNet, ResNetConfig


def test_saving_and_loading_a_checkpoint_leaves_the_global_rng_as_it_was(tmp_path):
    # a Download or Load during another learner's seeded Reset must not change that learner's run
    model = ResNet(ResNetConfig())
    before = torch.random.get_rng_state()
    hub = checkpoint.to_hub(model, [str(i) for i in range(10)], "shapes")
    checkpoint.save(model, tmp_path / "ckpt", hub.classes, "shapes")
    checkpoint.load(tmp_path / "ckpt")
    assert torch.equal(torch.random.get_rng_state(), before)
