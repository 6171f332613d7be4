"""The data layer's promises: a deterministic, balanced, learnable-but-not-trivial shapes set, a registry that
fails clearly and shares one copy, and an augmentation that is exactly a per-sample flip and shift.
"""

import pytest
import torch
import torch.nn.functional as F

from resnet import data
from resnet.data import augment, load_dataset, make_shapes, normalize
from resnet.errors import UserError


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(n_train=1000, n_test=500, seed=0)


def test_same_seed_same_bits_other_seed_other_images():
    first, again = make_shapes(n_train=100, n_test=50, seed=0), make_shapes(n_train=100, n_test=50, seed=0)
    for k in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, k), getattr(again, k))
    other = make_shapes(n_train=100, n_test=50, seed=1)
    assert not torch.equal(first.train_x, other.train_x)
    assert not torch.equal(first.train_y, other.train_y)


def test_shapes_dtypes_and_ranges(shapes):
    assert shapes.name == "shapes" and shapes.classes == data.SHAPES and len(data.SHAPES) == 10
    assert shapes.train_x.shape == (1000, 3, 32, 32) and shapes.test_x.shape == (500, 3, 32, 32)
    assert shapes.train_x.dtype == shapes.test_x.dtype == torch.uint8
    assert shapes.train_y.shape == (1000,) and shapes.train_y.dtype == shapes.test_y.dtype == torch.int64
    assert shapes.train_x.max() > 240 and shapes.train_x.min() < 15  # the full pixel range is used
    assert shapes.train_x.float().std() > 40  # images, not blank canvases


def test_classes_are_balanced_and_shuffled(shapes):
    assert torch.bincount(shapes.train_y, minlength=10).tolist() == [100] * 10
    assert torch.bincount(shapes.test_y, minlength=10).tolist() == [50] * 10
    assert (shapes.train_y[1:] == shapes.train_y[:-1] + 1).float().mean() < 0.3  # not 0, 1, 2, ... in order
    uneven = torch.bincount(make_shapes(n_train=25, n_test=7).train_y, minlength=10)
    assert uneven.sum() == 25 and uneven.max() - uneven.min() == 1  # as even as 25 allows


def test_train_and_test_are_different_images(shapes):
    train = {bytes(x.numpy()) for x in shapes.train_x}
    assert not any(bytes(x.numpy()) in train for x in shapes.test_x)


def test_nearest_class_mean_is_above_chance_but_far_from_perfect(shapes):
    # on ink maps (distance of each grey pixel from the image's median, so colours drop out) the class means
    # carry some signal, measured 0.20-0.27 over seeds: neither noise nor a task solved without learning
    def ink(x):  # (N, 3, 32, 32) uint8 -> (N, 1024)
        grey = x.float().mean(1).flatten(1)
        return (grey - grey.median(1, keepdim=True).values).abs()

    x, xt = ink(shapes.train_x), ink(shapes.test_x)
    means = torch.stack([x[shapes.train_y == c].mean(0) for c in range(10)])  # (10, 1024)
    acc = (torch.cdist(xt, means).argmin(1) == shapes.test_y).float().mean().item()
    assert 0.15 < acc < 0.45


def test_normalize_maps_0_and_255_to_minus_and_plus_2():
    x = torch.tensor([0, 255], dtype=torch.uint8).reshape(1, 2, 1, 1)
    y = normalize(x)
    assert y.dtype == torch.float32 and y.device == x.device
    assert y.flatten().tolist() == [-2.0, 2.0]


def test_unknown_dataset_names_the_choices():
    with pytest.raises(UserError, match=r"unknown dataset 'nope'; choose from \[.*'shapes'"):
        load_dataset("nope")


def test_load_dataset_builds_once_and_register_replaces(monkeypatch):
    monkeypatch.setattr(data, "DATASETS", dict(data.DATASETS))  # leave the real registry and cache untouched
    monkeypatch.setattr(data, "_CACHE", {})
    calls = []
    data.register("tiny", lambda: calls.append(1) or make_shapes(n_train=20, n_test=10))
    first = load_dataset("tiny")
    assert load_dataset("tiny", device=torch.device("cpu")) is first and len(calls) == 1
    data.register("tiny", lambda: make_shapes(n_train=30, n_test=10))
    assert len(load_dataset("tiny").train_y) == 30


def test_dataset_to_moves_every_tensor(shapes):
    moved = shapes.to("cpu")
    assert moved is not shapes and moved.classes == shapes.classes
    assert torch.equal(moved.test_x, shapes.test_x)


def test_dataset_rejects_malformed_tensors():
    x, y = torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="'bad'"):
        data.Dataset("bad", ("a",), x.float(), y, x, y)


# --- augment ------------------------------------------------------------------------------------------------
@pytest.fixture
def batch():
    return torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # no symmetry to hide a bug


def test_augment_keeps_shape_dtype_device_and_input(batch):
    before = batch.clone()
    out = augment(batch)
    assert out.shape == batch.shape and out.dtype == batch.dtype and out.device == batch.device
    assert torch.equal(batch, before)


def test_augment_is_deterministic_with_a_seeded_generator(batch):
    a = augment(batch, torch.Generator().manual_seed(3))
    b = augment(batch, torch.Generator().manual_seed(3))
    c = augment(batch, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_is_a_flip_and_a_shift_of_each_sample(batch):
    # every output must be exactly one of the 9 x 9 crops of the reflect-padded input, mirrored or not
    out = augment(batch, torch.Generator().manual_seed(0))
    padded = F.pad(batch, (4, 4, 4, 4), mode="reflect")  # (64, 3, 40, 40)

    def crop(i, dy, dx, flip):
        c = padded[i, :, dy : dy + 32, dx : dx + 32]
        return c.flip(-1) if flip else c

    found = []
    for i in range(len(batch)):
        matches = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if torch.equal(out[i], crop(i, dy, dx, flip))
        ]
        assert len(matches) == 1, f"sample {i} is not a flipped and shifted copy of its input"
        found += matches
    assert {flip for _, _, flip in found} == {False, True}  # each sample flips on its own coin
    assert len({(dy, dx) for dy, dx, _ in found}) > 20  # and shifts by its own offset
    assert found.count((4, 4, False)) < 5  # the identity is 1 of 162 choices: pixels do move


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_augment_runs_on_the_gpu_with_a_gpu_generator(batch):
    x = batch.cuda()
    a = augment(x, torch.Generator(device="cuda").manual_seed(0))
    assert a.device == x.device and torch.equal(a, augment(x, torch.Generator(device="cuda").manual_seed(0)))
    assert load_dataset("shapes", device="cuda").train_x.device.type == "cuda"
