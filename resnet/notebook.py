"""The course notebook, cell by cell, run on this package's model: `python -m resnet.notebook`.

The notebook spends random numbers in its own construction order (its `downsample` conv before the block's convs,
then an unused `shortcut` conv with a bias), so we keep a faithful copy of its classes, build that under the
same seed, and convert its weights into `resnet.ResNet` (`from_notebook`). The numbers printed are then
this package's forward pass and training step, and they match the notebook's: logits [-0.0362, ...], Loss 2.2598.
"""

import torch
import torch.nn as nn

from .model import ResNet, notebook_config

NOTEBOOK_LOGITS = [-0.0362, -0.4174, -0.8190, 0.2587, 1.0380, 0.6910, 0.5373, -0.6552, -0.0163, 0.0168]
NOTEBOOK_LOSS = 2.259821891784668


class NotebookResidualBlock(nn.Module):
    """The notebook's block, unchanged, bug included: `self.shortcut` is built and never used."""

    def __init__(self, in_channels, out_channels, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x):
        identity = x
        if self.downsample is not None:
            identity = self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class NotebookResNet(nn.Module):
    """The notebook's network, unchanged."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.layer1 = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        )
        self.layer2 = NotebookResidualBlock(64, 64)
        self.layer3 = NotebookResidualBlock(
            64,
            128,
            stride=2,
            downsample=nn.Sequential(nn.Conv2d(64, 128, kernel_size=1, stride=2, bias=False), nn.BatchNorm2d(128)),
        )
        self.layer4 = NotebookResidualBlock(128, 128)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def from_notebook(nb: NotebookResNet) -> ResNet:
    """This package's ResNet with the notebook model's weights; the unused `shortcut` projection is dropped,
    and the notebook's `downsample` (the one that did the work) becomes block 2's shortcut."""
    model = ResNet(notebook_config())
    renames = {"layer1.0.": "stem.conv.", "layer1.1.": "stem.bn.", "fc.": "fc."}
    for layer, block in (("layer2", 0), ("layer3", 1), ("layer4", 2)):
        for nb_name, name in (("conv1", "conv1"), ("bn1", "bn1"), ("conv2", "conv2"), ("bn2", "bn2")):
            renames[f"{layer}.{nb_name}."] = f"blocks.{block}.residual.{name}."
    renames["layer3.downsample.0."] = "blocks.1.shortcut.conv."
    renames["layer3.downsample.1."] = "blocks.1.shortcut.bn."
    state = {}
    for key, value in nb.state_dict().items():
        prefix = next((p for p in renames if key.startswith(p)), None)
        if prefix is not None:  # keys of the unused layer3.shortcut have no counterpart
            state[renames[prefix] + key[len(prefix) :]] = value
    model.load_state_dict(state, strict=True)
    return model


def run_cells(seed: int = 42) -> dict:
    """The notebook's cells In[17]..In[24] with this package's model; returns what they print."""
    torch.manual_seed(seed)
    input_data = torch.randn(1, 3, 32, 32)
    model = from_notebook(NotebookResNet(num_classes=10))
    output = model(input_data)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    target = torch.tensor([3])
    optimizer.zero_grad()
    loss = criterion(output, target)
    loss.backward()
    optimizer.step()
    block1 = model.blocks[0].residual
    return {
        "output": output,
        "loss": loss.item(),
        "layer2_grads": {
            "conv1.weight": block1.conv1.weight.grad,
            "bn1.weight": block1.bn1.weight.grad,
            "bn1.bias": block1.bn1.bias.grad,
            "conv2.weight": block1.conv2.weight.grad,
            "bn2.weight": block1.bn2.weight.grad,
            "bn2.bias": block1.bn2.bias.grad,
        },
    }


def main():
    cells = run_cells()
    print(cells["output"])
    print(f"Loss: {cells['loss']}")
    for name, grad in cells["layer2_grads"].items():  # the notebook's layer2 is our block1
        print(f"{name}: {grad}")


if __name__ == "__main__":
    main()
