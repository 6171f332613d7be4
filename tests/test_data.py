"""The data layer's promises: a deterministic, balanced, learnable-but-not-trivial shapes set, a registry that
fails clearly, shares one copy and never makes one learner wait on another's download, an augmentation that is
exactly a per-sample flip and shift, and a learner's zip that is refused by name when it is damaged or would cost
minutes to decode.
"""

import io
import struct
import threading
import zipfile

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnet import data, zipdata
from resnet.data import augment, load_dataset, make_shapes, normalize
from resnet.errors import UserError
from resnet.inference import to_square


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


def test_a_stalled_build_holds_up_only_its_own_dataset(monkeypatch):
    # a Hub download that hangs: learners on a built dataset, or on another one, must not wait for it
    monkeypatch.setattr(data, "DATASETS", dict(data.DATASETS))
    monkeypatch.setattr(data, "_CACHE", {})
    started, release, calls = threading.Event(), threading.Event(), []

    def stalled():
        calls.append(1)
        started.set()
        release.wait(30)
        return make_shapes(n_train=20, n_test=10)

    data.register("stalled", stalled)
    data.register("built", lambda: make_shapes(n_train=20, n_test=10))
    data.register("other", lambda: make_shapes(n_train=20, n_test=10))
    built = load_dataset("built")
    got = {}
    waiting = [threading.Thread(target=lambda k=k: got.setdefault(k, []).append(load_dataset("stalled"))) for k in "ab"]
    for t in waiting:
        t.start()
    try:
        assert started.wait(10)
        others = threading.Thread(target=lambda: got.update(built=load_dataset("built"), other=load_dataset("other")))
        others.start()
        others.join(10)
        assert got.get("built") is built and "other" in got, "a stalled build held up another dataset"
    finally:
        release.set()
        for t in waiting:
            t.join(10)
    assert len(calls) == 1 and got["a"][0] is got["b"][0]  # the second learner waited for the first one's build


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


# --- a learner's zip (resnet.zipdata) ----------------------------------------------------------------------------
def png(size, mode="L") -> bytes:
    """A single-colour PNG: a few kB even at many megapixels, cheap to make and costly only to decode."""
    buf = io.BytesIO()
    Image.new(mode, (size, size) if isinstance(size, int) else size, 90).save(buf, "PNG")
    return buf.getvalue()


def make_zip(path, entries: dict[str, bytes], method=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", method) as z:
        for name, raw in entries.items():
            z.writestr(name, raw)
    return path


@pytest.fixture
def squared(monkeypatch):
    """What load_zip had decoded, in order: each image it handed to to_square."""
    images = []
    monkeypatch.setattr(zipdata, "to_square", lambda value: images.append(value) or to_square(value))
    return images


def test_a_huge_image_is_refused_from_its_header_before_it_is_decoded(tmp_path, squared):
    entries = {"cat/a.png": png(32), "cat/b.png": png(32), "dog/huge.png": png((4000, 3000)), "dog/d.png": png(32)}
    with pytest.raises(UserError, match=r"'dog/huge.png' is 4000x3000 pixels \(12.0 Mpx\); the limit is 8.3 Mpx"):
        zipdata.load_zip(make_zip(tmp_path / "huge.zip", entries))
    assert [img.size for img in squared] == [(32, 32), (32, 32)]


def test_the_zips_pixels_have_a_budget_checked_before_each_image_is_decoded(tmp_path, squared):
    entries = {f"{c}/{i}.png": png(1000) for c in "ab" for i in range(3)}  # 1 Mpx each
    with pytest.raises(UserError, match=r"more than 4 Mpx \(at 'b/1.png'\)") as refused:
        zipdata.load_zip(make_zip(tmp_path / "many.zip", entries), zipdata.ZipLimits(max_total_pixels=4_000_000))
    assert "b/1.png" in refused.value.text("zh") and len(squared) == 4


def test_a_phone_photo_counts_at_the_scale_a_jpeg_decodes_at(tmp_path, squared):
    # 12 Mpx, as a JPEG and as the MPO a phone writes (a JPEG with a second picture in it): both decode at 1/8
    photo, buf, mpo = Image.new("RGB", (4000, 3000), (200, 120, 40)), io.BytesIO(), io.BytesIO()
    photo.save(buf, "JPEG")
    photo.save(mpo, "MPO", save_all=True, append_images=[photo.resize((400, 300))])
    entries = {
        "cat/photo.jpg": buf.getvalue(),
        "cat/phone.jpg": mpo.getvalue(),
        "dog/a.png": png(32),
        "dog/b.png": png(32),
    }
    loaded = zipdata.load_zip(make_zip(tmp_path / "photos.zip", entries), zipdata.ZipLimits(max_total_pixels=500_000))
    assert loaded.classes == ("cat", "dog") and [img.size for img in squared[:2]] == [(500, 375)] * 2


def corrupt_crc(raw: bytearray):
    for sig, at in ((b"PK\x03\x04", 14), (b"PK\x01\x02", 16)):  # the first member's CRC, in both headers
        raw[raw.find(sig) + at] ^= 0xFF


def corrupt_data(raw: bytearray):
    start = raw.find(b"PK\x03\x04")
    name_len, extra_len = struct.unpack("<HH", raw[start + 26 : start + 30])
    at = start + 30 + name_len + extra_len
    raw[at : at + 20] = b"\xff" * 20  # the first member's deflate stream


def encrypt_flag(raw: bytearray):
    for sig, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # "encrypted" on every member, no password
        k = 0
        while (k := raw.find(sig, k)) >= 0:
            raw[k + at] |= 1
            k += 4


def unknown_method(raw: bytearray):
    for sig, at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # a compression method zipfile lacks (AES)
        raw[raw.find(sig) + at : raw.find(sig) + at + 2] = struct.pack("<H", 99)


@pytest.mark.parametrize(
    "corrupt, reason",
    [
        (corrupt_crc, "is damaged"),
        (corrupt_data, "is damaged"),
        (encrypt_flag, "is password-protected"),
        (unknown_method, "is damaged"),
    ],
)
def test_a_damaged_or_encrypted_member_is_refused_by_name(tmp_path, corrupt, reason):
    entries = {f"{c}/{i}.png": png(40) for c in "ab" for i in range(3)}
    stored = corrupt is corrupt_crc  # stored, not deflated: only the CRC check can notice
    path = make_zip(tmp_path / "odd.zip", entries, zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
    raw = bytearray(path.read_bytes())
    corrupt(raw)
    path.write_bytes(raw)
    with pytest.raises(UserError, match=f"'a/0.png' {reason}") as refused:
        zipdata.load_zip(path)
    assert "a/0.png" in refused.value.text("zh")
