"""Hub datasets, zip uploads and checkpoints, on small data made here in the real formats; no network."""

import io
import json
import zipfile

import huggingface_hub
import huggingface_hub.constants
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from huggingface_hub import file_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from huggingface_hub.utils import hf_raise_for_status
from PIL import Image

from resnet import checkpoint, hub, zipdata
from resnet.checkpoint import httpx2  # huggingface-hub's HTTP client (httpx before 2.0)
from resnet.data import normalize
from resnet.errors import UserError
from resnet.inference import to_tensor
from resnet.model import ResNet, ResNetConfig
from resnet.session import Session, TrainConfig


def png(colour, size=32, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "CACHE", tmp_path / "cache")


def write_parquet(path, column, images, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({column: [{"bytes": b, "path": None} for b in images], "label": labels}), path)


def test_a_parquet_file_in_cifar10s_schema_loads_through_the_hub_code_path(offline, tmp_path):
    spec = hub.HUB_DATASETS["cifar10"]
    write_parquet(tmp_path / "hub" / spec.train, "img", [png((255, 0, 0)), png((0, 0, 255))] * 3, [0, 9] * 3)
    write_parquet(tmp_path / "hub" / spec.test, "img", [png((0, 255, 0))], [6])
    data = hub.load_hub("cifar10", local_dir=tmp_path / "hub")
    assert data.train_x.shape == (6, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.train_y.tolist() == [0, 9] * 3 and data.classes[9] == "truck"
    assert data.train_x[0, :, 5, 5].tolist() == [255, 0, 0]
    assert (hub.CACHE / "cifar10-main.pt").exists()  # decoded once; the next load skips the parquet
    assert torch.equal(hub.load_hub("cifar10").test_x, data.test_x)


def test_grayscale_28px_images_become_3_channel_32px(offline, tmp_path):
    spec = hub.HUB_DATASETS["mnist"]
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 12:16] = 255
    buf = io.BytesIO()
    Image.fromarray(digit).save(buf, format="PNG")
    write_parquet(tmp_path / "hub" / spec.train, "image", [buf.getvalue()] * 2, [1, 1])
    write_parquet(tmp_path / "hub" / spec.test, "image", [buf.getvalue()], [1])
    x = hub.load_hub("mnist", local_dir=tmp_path / "hub").train_x
    assert x.shape == (2, 3, 32, 32)
    assert x[0, :, 16, 16].tolist() == [255, 255, 255] and x[0, 0, 0, 0] == 0  # centred on its own background


def test_offline_without_the_files_is_a_clear_message(offline, tmp_path):
    with pytest.raises(zipdata.DataError, match="offline.*'shapes'"):
        hub.load_hub("fashion_mnist", local_dir=tmp_path / "empty")


def hub_refuses(monkeypatch, status: int, message: str):
    """The Hub answering the download's HEAD request with `status`, for a file not in the cache: the library's own
    errors, raised the library's way, from the one HEAD `hub` asks first (get_hf_file_metadata) and from
    hf_hub_download (a 429 or a 500 comes wrapped in a LocalEntryNotFoundError saying to check the connection)."""
    url = "https://huggingface.co/datasets/x/y/resolve/main/train.parquet"

    def head(*args, **kwargs):
        hf_raise_for_status(
            httpx2.Response(status, headers={"X-Error-Message": message}, request=httpx2.Request("HEAD", url))
        )

    def download(*args, local_files_only=False, **kwargs):
        if local_files_only:
            raise LocalEntryNotFoundError("not in the cache")
        try:
            head()
        except HfHubHTTPError as e:
            file_download._raise_on_head_call_error(e, force_download=False, local_files_only=False)

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", head)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)


@pytest.mark.parametrize(
    "status, said",
    [
        (429, "429 Too Many Requests — rate limited; try again in a minute"),
        (503, "503 Service Unavailable — rate limited; try again in a minute"),
        (400, "400 Bad Request — rate limited."),
    ],
    ids=["429", "503", "400"],
)
def test_an_error_from_the_hub_is_shown_as_the_hubs_answer_not_as_offline(monkeypatch, tmp_path, status, said):
    monkeypatch.setattr(hub, "CACHE", tmp_path / "cache")
    hub_refuses(monkeypatch, status, "rate limited")
    with pytest.raises(zipdata.DataError) as e:
        hub.load_hub("cifar10")
    assert f"the Hub answered {said}" in str(e.value) and "offline" not in str(e.value)
    assert said.split(" — ")[0] in e.value.zh and "没有联网" not in e.value.zh


def test_a_download_that_timed_out_is_a_message_not_a_traceback(monkeypatch, tmp_path):
    # the file's GET, retried and timed out, comes out of hf_hub_download as httpx's own ReadTimeout
    def download(*args, local_files_only=False, **kwargs):
        if local_files_only:
            raise LocalEntryNotFoundError("not in the cache")
        raise httpx2.ReadTimeout("The read operation timed out")

    monkeypatch.setattr(hub, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *args, **kwargs: None)  # the HEAD answered
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(zipdata.DataError, match=r"\(ReadTimeout\): the Hub did not answer in time; try again later"):
        hub.load_hub("mnist")


def make_zip(path, entries: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def test_a_zip_of_class_folders_becomes_a_dataset_a_session_trains_on(tmp_path):
    entries = {f"cat/{i}.png": png((200, 100, 0)) for i in range(5)}
    entries |= {f"dog/{i}.jpg": png((0, 100, 200)) for i in range(5)}
    entries["__MACOSX/._cat"] = b"junk"
    data = zipdata.load_zip(make_zip(tmp_path / "pets.zip", entries))
    assert data.classes == ("cat", "dog")
    assert len(data.train_y) == 8 and len(data.test_y) == 2 and sorted(data.test_y.tolist()) == [0, 1]
    session = Session(TrainConfig(batch_size=4, eval_every=0), data=data)
    assert session.step(2)["done"] == 2 and session.config.dataset == "zip:pets"


@pytest.mark.parametrize(
    "entries, limits, reason",
    [
        ({"cat/a.png": png(0), "cat/b.png": png(0), "dog/notes.txt": b"hello"}, {}, "not an image file"),
        ({"cat/a.png": png(0), "../dog/b.png": png(0)}, {}, "outside the archive"),
        ({"/etc/a.png": png(0), "dog/b.png": png(0)}, {}, "outside the archive"),
        ({"cat/a.png": png(0), "cat/b.png": png(0)}, {}, "at least 2 are needed"),
        ({f"c{i % 2}/{i}.png": png(0) for i in range(12)}, {"max_files": 10}, "limit is 10"),
        ({"cat/a.png": png(0), "dog/b.png": b"\x89PNG\r\n\x1a\n truncated"}, {}, "could not be read"),
        ({"cat/a.png": png(0), "cat/b.png": png(0), "dog/c.png": png(0)}, {}, "too few in: dog"),
        ({"a.png": png(0), "dog/b.png": png(0)}, {}, "not inside a class folder"),
        ({"cat/a.png": png(0), "dog/b.png": b"\0" * 10_000}, {"max_unpacked": 5_000}, "unpacks to more"),
    ],
)
def test_bad_zips_are_refused_with_the_reason(tmp_path, entries, limits, reason):
    with pytest.raises(zipdata.DataError, match=reason):
        zipdata.load_zip(make_zip(tmp_path / "bad.zip", entries), zipdata.ZipLimits(**limits))


def rgba_photo(width, height, seed, fmt="PNG") -> bytes:
    """A non-square picture with a half-transparent stripe and fully transparent corners (RGB for JPEG)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    a[..., 3] = 255
    a[: height // 3, :, 3] = 128  # half see-through: what lies under it shows
    a[:4, :4, 3] = 0  # transparent: stored black, shown as the page behind it
    img = Image.fromarray(a)
    buf = io.BytesIO()
    (img.convert("RGB") if fmt == "JPEG" else img).save(buf, format=fmt)
    return buf.getvalue()


def test_a_zips_images_train_on_exactly_the_pixels_predict_gives_the_same_files(tmp_path):
    # one pipeline: a learner's own picture, predicted, must be what the net was trained on. Non-square and
    # transparent, larger and smaller than 32 px, a JPEG big enough for draft decoding: each way they could differ
    files = {
        "cat/wide.png": rgba_photo(90, 40, 0),
        "cat/small.png": rgba_photo(20, 12, 1),
        "dog/tall.png": rgba_photo(33, 70, 2),
        "dog/photo.jpg": rgba_photo(400, 300, 3, "JPEG"),
    }
    data = zipdata.load_zip(make_zip(tmp_path / "mine.zip", files))
    # each class's first image is held out (n_test = 1 of 2), the second trains
    for name, x in zip(files, (data.test_x[0], data.train_x[0], data.test_x[1], data.train_x[1])):
        torch.testing.assert_close(normalize(x[None]), to_tensor(files[name]), rtol=0, atol=0, msg=name)


def test_zips_up_to_the_apps_upload_cap_are_accepted(tmp_path):
    # the app caps uploads at f"{MAX_UPLOAD_MB}mb", which gradio counts in units of 2**20 bytes
    entries = {f"{c}/{i}.png": png(i) for c in ("cat", "dog") for i in range(2)}
    entries["__MACOSX/padding"] = b"\0" * (zipdata.MAX_UPLOAD_MB * 2**20 - 20_000)  # stored: the zip is that big
    path = make_zip(tmp_path / "big.zip", entries)
    assert zipdata.MAX_UPLOAD_MB * 1_000_000 < path.stat().st_size <= zipdata.MAX_UPLOAD_MB * 2**20
    assert zipdata.load_zip(path).classes == ("cat", "dog")
    entries["__MACOSX/padding"] += b"\0" * 40_000
    with pytest.raises(zipdata.DataError, match=f"the limit is {zipdata.MAX_UPLOAD_MB} MB"):
        zipdata.load_zip(make_zip(tmp_path / "big.zip", entries))


def test_a_file_that_is_not_a_zip_is_refused(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"PK but not really")
    with pytest.raises(UserError, match="not a zip"):  # a UserError: the app shows the learner this message
        zipdata.load_zip(tmp_path / "x.zip")


def test_checkpoint_round_trip_gives_identical_outputs_and_shortcut_states(tmp_path):
    torch.manual_seed(0)
    model = ResNet(ResNetConfig(widths=(8, 16), blocks=(1, 1), stem_width=8, num_classes=3)).eval()
    model.set_shortcut(False, block=2)
    checkpoint.save(model, tmp_path / "ckpt", classes=["a", "b", "c"], dataset="shapes")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["shortcuts"] == [True, False] and config["architecture"]["widths"] == [8, 16]
    loaded = checkpoint.load(tmp_path / "ckpt")
    assert loaded.shortcuts == [True, False] and loaded.classes == ["a", "b", "c"] and not loaded.training
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))


def test_a_checkpoint_of_another_architecture_fails_clearly(tmp_path):
    checkpoint.save(ResNet(ResNetConfig(widths=(8,), blocks=(1,), stem_width=8)), tmp_path / "small", classes="ab" * 5)
    config = json.loads((tmp_path / "small" / "config.json").read_text())
    config["architecture"]["widths"] = [16]  # the weights no longer fit the architecture it claims
    (tmp_path / "small" / "config.json").write_text(json.dumps(config))
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint of this app"):
        checkpoint.load(tmp_path / "small")
    target = ResNet()
    with pytest.raises(checkpoint.CheckpointError, match="different architecture"):
        checkpoint.load_into(target, ResNet(ResNetConfig(widths=(8,), blocks=(1,), stem_width=8)))


def test_a_dataset_pinned_to_a_commit_is_cached_under_that_commit(offline, tmp_path, monkeypatch):
    # the Hub can't be reached here to look the shas up, so the registry says "main"; pinning one must never
    # serve data decoded from another revision out of the cache
    import dataclasses

    sha = "0123456789abcdef0123456789abcdef01234567"
    spec = dataclasses.replace(hub.HUB_DATASETS["cifar10"], revision=sha)
    monkeypatch.setitem(hub.HUB_DATASETS, "cifar10", spec)
    write_parquet(tmp_path / "hub" / spec.train, "img", [png((255, 0, 0))] * 2, [0, 9])
    write_parquet(tmp_path / "hub" / spec.test, "img", [png((0, 255, 0))], [6])
    hub.load_hub("cifar10", local_dir=tmp_path / "hub")
    assert [p.name for p in hub.CACHE.iterdir()] == [f"cifar10-{sha}.pt"]
