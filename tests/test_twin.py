"""Twins keep their promises: same start, same batches, shortcuts that cannot be switched by accident, gradient
routes that add up to autograd's gradient (float64), lesions that leave the weights alone, charts that render.
"""

import copy

import plotly.graph_objects as go
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from resnet import charts
from resnet.data import make_shapes, normalize
from resnet.model import ResNet, cifar_config
from resnet.session import Session, TrainConfig
from resnet.twin import (
    PlainTwin,
    TwinSession,
    gradient_routes,
    layer_depth_norms,
    lesion_accuracies,
    route_gradients,
    same_weights,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small():
    return make_shapes(n_train=200, n_test=100, seed=0)


def train_config(**changes) -> TrainConfig:
    # on the CPU wherever a GPU is: the twins' logic, checked bit for bit against tensors these tests make on the CPU
    return TrainConfig(**{"batch_size": 8, "eval_every": 0, "precision": "fp32", "device": "cpu", **changes})


def twin(small, n: int = 1, **changes) -> TwinSession:
    return TwinSession(train_config(**changes), cifar_config(n, width=8), data=small, probe_size=16)


def state_of(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_twins_start_identical_and_see_the_same_batches(small):
    t = twin(small, seed=3)
    assert t.residual.shortcuts == [True] * 3 and t.plain.shortcuts == [False] * 3
    assert_same_state(state_of(t.residual.model), state_of(t.plain.model))  # every parameter and BN buffer
    seen = {"residual": [], "plain": []}
    for name, session in t.twins.items():

        def spy(x, y, static=True, session=session, name=name):
            seen[name].append((x.clone(), y.clone()))
            return type(session)._launch(session, x, y, static)

        session._launch = spy
    reports = t.step(3)
    assert reports["residual"]["done"] == reports["plain"]["done"] == 3 and t.step_count == 3
    for (xr, yr), (xp, yp) in zip(seen["residual"], seen["plain"], strict=True):
        assert torch.equal(xr, xp) and torch.equal(yr, yp)  # the same images, the same augmentation
    assert not torch.equal(seen["residual"][0][0], seen["residual"][1][0])  # and the stream moves on
    assert not same_weights(t.residual.model, t.plain.model)  # training has told them apart

    # the residual twin trains exactly as a lone Session with the same seed: twinning changes nothing for it
    alone = Session(train_config(seed=3), cifar_config(1, width=8), data=small)
    assert [alone.step(1)["last"]["loss"] for _ in range(3)] == [r["loss"] for r in t.residual.history.steps]

    t.reset(seed=5)
    assert t.step_count == 0 and t.routes == [] and t.plain.history.steps == []
    assert same_weights(t.residual.model, t.plain.model) and t.plain.shortcuts == [False] * 3


def test_a_twins_shortcuts_cannot_be_switched_by_accident(small):
    t = twin(small)
    with pytest.raises(ValueError, match="plain twin's shortcuts stay off"):
        t.plain.set_shortcut(True)
    with pytest.raises(ValueError, match="plain twin"):
        t.plain.set_shortcut(True, block=2)
    with pytest.raises(ValueError, match="residual twin's shortcuts stay on"):
        t.residual.set_shortcut(False, block=1)
    t.plain.set_shortcut(False)  # asking for what it already is is harmless
    assert t.plain.shortcuts == [False] * 3 and t.residual.shortcuts == [True] * 3
    t.reset(model_config=cifar_config(2, width=8))
    assert t.plain.shortcuts == [False] * 6
    assert isinstance(PlainTwin(train_config(), data=small), Session)  # the app can treat it as any Session
    t.plain.model.set_shortcut(True, 1)  # behind the twin's back: training refuses rather than compare nonsense
    with pytest.raises(ValueError, match="switched behind its back"):
        t.step(1)


def test_configure_changes_both_twins_or_neither(small):
    t = twin(small)
    t.configure(lr=2e-3, batch_size=4)
    assert t.residual.config == t.plain.config and t.plain.config.lr == 2e-3 and t.plain.config.batch_size == 4
    with pytest.raises(ValueError, match="learning rate"):
        t.configure(lr=-1)
    with pytest.raises(ValueError, match="unknown optimizer"):
        t.configure(lr=5e-4, optimizer="lion")  # the lr went through before the optimizer failed
    assert t.residual.config == t.plain.config and t.plain.config.lr == 5e-4
    assert t.step(1)["plain"]["last"]["lr"] == 5e-4


def test_routes_are_recorded_on_a_fixed_probe_every_eval(small):
    t = twin(small, eval_every=2, eval_size=20)
    t.step(4)
    assert [r["step"] for r in t.routes] == [1, 2, 4]
    assert [b["block"] for b in t.routes[-1]["blocks"]] == [1, 2, 3]
    assert [e["step"] for e in t.plain.history.evals] == [2, 4]
    assert t.record_routes()["blocks"] == t.routes[-1]["blocks"]  # the same probe, the same weights


def test_route_gradients_add_up_to_autograd_in_float64():
    torch.manual_seed(0)
    model = ResNet(cifar_config(1, width=4)).double()  # blocks 2 and 3 have projection shortcuts
    model.train()
    x, y = torch.randn(6, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (6,))
    before = state_of(model)
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for b in model.blocks]
    loss = F.cross_entropy(model(x), y)
    for hook in hooks:
        hook.remove()
    reference = torch.autograd.grad(loss, inputs)  # dL/d(input of block i), by autograd through the real model
    model.load_state_dict(before)  # that forward moved the BN statistics; the routes must leave them be

    routes = route_gradients(model, x, y)
    assert [r[0] for r in routes] == [1, 2, 3]
    for (_, total, residual, shortcut), ref in zip(routes, reference, strict=True):
        torch.testing.assert_close(residual + shortcut, ref, rtol=1e-12, atol=1e-15)  # the two routes: all of it
        torch.testing.assert_close(total, ref, rtol=1e-12, atol=1e-15)
        assert residual.norm() > 0 and shortcut.norm() > 0
    # the "+1": through an identity shortcut, block 1's input gets exactly the gradient at its sum, i.e. the
    # gradient at its output (block 2's input) through the ReLU's mask
    torch.testing.assert_close(routes[0][3], reference[1] * (inputs[1] > 0), rtol=1e-12, atol=1e-15)

    norms = gradient_routes(model, x, y)
    for row, (block, total, residual, shortcut) in zip(norms, routes, strict=True):
        assert row == {
            "block": block,
            "total": pytest.approx(total.norm().item(), rel=1e-12),
            "residual": pytest.approx(residual.norm().item(), rel=1e-12),
            "shortcut": pytest.approx(shortcut.norm().item(), rel=1e-12),
        }
    # nothing about the model changed: weights, BN statistics, mode, .grad
    assert_same_state(state_of(model), before)
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    gradient_routes(model, x, y)
    assert not model.training

    model.set_shortcut(False, 2)  # a block without its shortcut has one route only: left out
    assert [r["block"] for r in gradient_routes(model, x, y)] == [1, 3]
    model.set_shortcut(False)
    assert gradient_routes(model, x, y) == []


class Bypass(nn.Module):
    """A lesioned block built by hand, the reference: relu(shortcut(x)), no residual branch."""

    def __init__(self, block):
        super().__init__()
        self.shortcut = block.shortcut

    def forward(self, x):
        return F.relu(self.shortcut(x))


def test_lesions_leave_the_weights_alone_and_match_a_real_bypass(small):
    t = twin(small, n=1)
    t.step(3)
    for session in t.twins.values():
        before = state_of(session.model)
        rows = lesion_accuracies(session, size=40, chunk=16)  # chunks of 16: 40 images in three pieces
        assert_same_state(state_of(session.model), before)  # bit for bit, BN statistics included
        assert session.model.training  # its mode is back
        assert [r["block"] for r in rows] == [None, 1, 2, 3]
        intact = session.evaluate(40)
        assert rows[0]["acc"] == intact["acc"] and rows[0]["loss"] == pytest.approx(intact["loss"], rel=1e-5)
        x, y = normalize(small.test_x[:40]), small.test_y[:40]
        for k in (1, 2, 3):
            cut = copy.deepcopy(session.model).eval()
            cut.blocks[k - 1] = Bypass(cut.blocks[k - 1])
            with torch.no_grad():
                logits = cut(x.contiguous(memory_format=session.memory_format))
            assert rows[k]["acc"] == (logits.argmax(1) == y).sum().item() / 40
            assert rows[k]["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert set(t.lesions(20)) == {"residual", "plain"}


def test_depth_norms_follow_the_longest_path():
    record = {
        "grad_norm": {
            "stem": 1.0,
            "block1.conv1": 2.0,
            "block1.conv2": 3.0,
            "block2.conv1": 4.0,
            "block2.conv2": 5.0,
            "block2.shortcut": 0.0,
            "fc": 6.0,
        }
    }
    rows = layer_depth_norms(record)
    assert [r["depth"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["layer"] for r in rows] == ["stem", "block1.conv1", "block1.conv2", "block2.conv1", "block2.conv2", "fc"]
    assert [r["grad_norm"] for r in rows] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_twin_charts_are_valid_plotly(small):
    t = twin(small, eval_every=2, eval_size=20)
    t.step(2)
    depth = charts.depth_figure(t.histories)
    assert [trace["x"] for trace in depth["data"]] == [list(range(1, 9))] * 2  # stem, 3 x 2 convs, fc
    assert depth["data"][0]["y"] == [
        t.residual.history.steps[-1]["grad_norm"][r["layer"]] for r in layer_depth_norms(t.residual.history.steps[-1])
    ]
    assert depth["layout"]["yaxis"]["type"] == "log"
    routes = charts.routes_figure(t.routes)
    assert len(routes["data"]) == 6 and routes["data"][0]["x"] == [1, 2]  # 3 blocks x 2 routes, steps 1 and 2
    lesions = charts.lesion_figure(t.lesions(20))
    intact = [trace for trace in lesions["data"] if trace["line"].get("dash") == "dash"]
    assert len(intact) == 2 and intact[0]["x"] == [1, 3]
    compare = charts.compare_figure(
        {"8 layers, residual": t.residual.history, "8 layers, plain": t.plain.history}, "loss", "loss", window=2
    )
    for fig in (depth, routes, lesions, compare):
        go.Figure(fig)  # plotly validates every property


def test_the_routes_legend_in_chinese_says_branch_and_shortcut_not_network():
    from resnet import charts

    names = {"block 1 via residual": "残差块 1 经残差分支", "block 1 via shortcut": "残差块 1 经残差连接"}
    figure = {"data": [{"name": n} for n in names], "layout": {}}
    assert [t["name"] for t in charts.translate(figure, "zh")["data"]] == list(names.values())
