"""The model against the notebook it grew from, and the shortcut switch's promises."""

import pytest
import torch

from resnet.model import ResNet, ResNetConfig, cifar_config, count_parameters
from resnet.notebook import NOTEBOOK_LOGITS, NOTEBOOK_LOSS, NotebookResNet, from_notebook, run_cells


def test_notebook_cells_print_the_notebooks_numbers():
    cells = run_cells()
    assert cells["output"].detach().squeeze().tolist() == pytest.approx(NOTEBOOK_LOGITS, abs=1e-4)
    assert cells["loss"] == pytest.approx(NOTEBOOK_LOSS, abs=1e-4)
    # the notebook's last cell prints layer2.conv1's gradient; its first entry reads -8.1463e-03
    assert cells["layer2_grads"]["conv1.weight"][0, 0, 0, 0].item() == pytest.approx(-8.1463e-03, abs=1e-7)


def test_parameter_counts_match_the_notebook_minus_its_unused_projection():
    assert count_parameters(ResNet()) == 602_698
    assert count_parameters(NotebookResNet()) == 611_274


@pytest.mark.parametrize("train", [True, False])
def test_converted_notebook_model_computes_the_same_function_and_gradients(train):
    torch.manual_seed(1)
    nb = NotebookResNet()
    model = from_notebook(nb)
    nb.train(train), model.train(train)
    x = torch.randn(4, 3, 32, 32)
    out_nb, out = nb(x), model(x)
    torch.testing.assert_close(out, out_nb, rtol=1e-5, atol=1e-5)
    out_nb.sum().backward(), out.sum().backward()
    torch.testing.assert_close(model.blocks[0].residual.conv1.weight.grad, nb.layer2.conv1.weight.grad)
    torch.testing.assert_close(model.blocks[1].shortcut.conv.weight.grad, nb.layer3.downsample[0].weight.grad)


def test_switching_shortcuts_changes_the_function_not_the_parameters():
    torch.manual_seed(0)
    model = ResNet().eval()
    x = torch.randn(2, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    on = model(x)
    model.set_shortcut(False)
    assert model.shortcuts == [False, False, False]
    off = model(x)
    assert not torch.allclose(on, off, atol=1e-3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.set_shortcut(True, block=2)
    assert model.shortcuts == [False, True, False]
    model.set_shortcut(True)
    torch.testing.assert_close(model(x), on)


def test_block_with_zero_residual_is_the_identity_up_to_relu():
    torch.manual_seed(0)
    model = ResNet(ResNetConfig(zero_init_residual=True)).eval()
    x = torch.randn(2, 64, 32, 32)
    block = model.blocks[0]  # 64 -> 64: identity shortcut
    torch.testing.assert_close(block(x), torch.relu(x))
    block.shortcut_on = False  # the plain block with a zero branch outputs relu(0) = 0
    assert torch.count_nonzero(block(x)) == 0


def test_unknown_block_is_a_clear_error():
    with pytest.raises(ValueError, match="blocks 1..3"):
        ResNet().set_shortcut(False, block=7)


def test_cifar_configs_have_6n_plus_2_layers_and_run():
    config = cifar_config(3)
    assert config.depth == 20
    model = ResNet(config)
    assert len(model.blocks) == 9
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    features = model.features(torch.randn(1, 3, 32, 32))
    assert features["block9"].shape == (1, 64, 8, 8)
    assert list(model.weighted_layers())[:3] == ["stem", "block1.conv1", "block1.conv2"]


def test_config_survives_json():
    config = ResNetConfig(widths=[8, 16], blocks=[2, 2], num_classes=4)
    assert ResNetConfig(**config.to_dict()) == config
    with pytest.raises(ValueError, match="one entry"):
        ResNetConfig(widths=(8, 16), blocks=(1,))
