"""Checkpoints: what a learner downloads, uploads, pushes and loads, and what an untrusted one cannot make us do.

Hub loads and pushes run against a small Hub on 127.0.0.1 that speaks the HTTP API huggingface_hub uses (model
info, file resolve, create repo, preupload, commit) and logs every request: no network, and the log shows what
was, and was not, fetched.
"""

import base64
import functools
import json
import os
import socket
import tempfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants
import pytest
import safetensors.torch
import torch
from huggingface_hub import ModelCard
from torch.utils.flop_counter import FlopCounterMode

from resnet import checkpoint
from resnet.checkpoint import CheckpointError, CheckpointLimits
from resnet.errors import UserError
from resnet.model import ARCHITECTURES, ResNet, ResNetConfig, architecture, cifar_config, count_parameters

ROOT = Path(__file__).resolve().parent.parent
CLASSES = [str(i) for i in range(10)]


def small_model(seed=0) -> ResNet:
    torch.manual_seed(seed)
    model = ResNet(ResNetConfig(stem_width=8, widths=(8, 16), blocks=(1, 1), num_classes=3)).eval()
    model.set_shortcut(False, block=2)
    return model


def same_outputs(a: ResNet, b: ResNet) -> bool:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return torch.equal(a.eval()(x), b.eval()(x))


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- the global RNG ------------------------------------------------------------------------------------------
def test_saving_and_loading_a_checkpoint_leaves_the_global_rng_as_it_was(tmp_path):
    # a Download or Load during another learner's seeded Reset must not change that learner's run
    model = ResNet(ResNetConfig())
    before = torch.random.get_rng_state()
    hub = checkpoint.to_hub(model, CLASSES, "shapes")
    checkpoint.save(model, tmp_path / "ckpt", hub.classes, "shapes")
    checkpoint.load(tmp_path / "ckpt")
    checkpoint.load_upload(checkpoint.download_zip(model, CLASSES, "shapes", tmp_path / "m.zip"))
    assert torch.equal(torch.random.get_rng_state(), before)


# --- writing -------------------------------------------------------------------------------------------------
def test_a_download_is_one_zip_and_nothing_else_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where a temporary folder would go
    (tmp_path / "tmp").mkdir()
    model = small_model()
    path = checkpoint.download_zip(model, "abc", "shapes", tmp_path / "learner" / "model.zip")
    assert path == tmp_path / "learner" / "model.zip"
    assert files_in(tmp_path) == ["learner", "learner/model.zip", "tmp"]
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["README.md", "config.json", "model.safetensors"]
    loaded = checkpoint.load_upload(path)
    assert loaded.shortcuts == [True, False] and loaded.classes == ["a", "b", "c"] and same_outputs(loaded, model)


def test_a_training_sessions_channels_last_model_downloads_and_loads_back(tmp_path):
    # a Session keeps its weights channels_last (faster convs on CPUs and GPUs); safetensors writes contiguous only
    model = small_model()
    live = small_model().to(memory_format=torch.channels_last)
    loaded = checkpoint.load_upload(checkpoint.download_zip(live, "abc", "shapes", tmp_path / "m.zip"))
    assert same_outputs(loaded, model)  # bit for bit the weights: compared in the same (contiguous) layout


def test_to_hub_is_a_copy_that_training_on_does_not_change():
    # the app pushes the copy outside the session's lock while training goes on
    model = small_model()
    hub = checkpoint.to_hub(model, "abc")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert same_outputs(hub, small_model())


def test_the_model_card_says_what_the_model_is_and_the_hub_reads_its_metadata(tmp_path):
    model = ResNet(ResNetConfig()).eval()
    model.set_shortcut(False, block=3)
    stats = {"steps": 1500, "held_out_acc": 0.9731, "optimizer": "adam"}
    with zipfile.ZipFile(checkpoint.download_zip(model, CLASSES, "cifar10", tmp_path / "m.zip", stats)) as z:
        text = z.read("README.md").decode()
    facts = ["602,698", "64, 128 channels", "| blocks per stage | 1, 2 |", "| 8 |", "cifar10", "1,500", "97.3%"]
    facts += ["| optimizer | adam |", "1: on, 2: on, 3: off", "checkpoint.load_repo(", "load_upload("]
    for fact in facts:
        assert fact in text, fact
    card = ModelCard(text)  # the Hub's own parser
    assert card.data.license == "mit" and card.data.library_name == "resnet-playground"
    assert card.data.pipeline_tag == "image-classification" and card.data.datasets == ["uoft-cs/cifar10"]
    assert card.data.eval_results[0].metric_type == "accuracy" and card.data.eval_results[0].metric_value == 0.9731
    without = checkpoint.model_card(checkpoint.to_hub(model, CLASSES, "shapes"))  # no stats: says so
    assert "not measured" in without.text and without.data.eval_results is None


# --- untrusted config.json -----------------------------------------------------------------------------------
@functools.cache
def notebook_checkpoint() -> tuple[bytes, bytes]:
    """The notebook net's config.json and model.safetensors, as `files` writes them."""
    torch.manual_seed(0)
    written = checkpoint.files(checkpoint.to_hub(ResNet(ResNetConfig()), CLASSES, "shapes"))
    return written["config.json"], written["model.safetensors"]


def saved(**change) -> tuple[bytes, bytes]:
    """The notebook net's checkpoint, with config.json's fields changed as given ("extra": a new architecture field)."""
    config_raw, weights = notebook_checkpoint()
    config = json.loads(config_raw)
    for key, value in change.items():
        section = config["architecture"] if key in config["architecture"] or key == "extra" else config
        section[key] = value
    return json.dumps(config).encode(), weights


@pytest.mark.parametrize(
    "change, word",
    [
        ({"widths": [64] * 5, "blocks": [1] * 5}, "1 to 4 stages"),
        ({"blocks": [1, 19]}, "1 to 18 blocks per stage"),
        ({"stem_width": 100_000}, "widths from 1 to 512 channels"),
        ({"in_channels": 7}, r"in_channels one of \[1, 3\]"),
        ({"num_classes": 1_000_000}, "2 to 1000 classes"),
        ({"classes": ["only one name"]}, "one name per output"),
        ({"classes": "0123456789"}, "classes must be a list"),
        ({"shortcuts": [True]}, "one shortcut switch"),
        ({"shortcuts": [1, 1, 1]}, "one shortcut switch"),
        ({"widths": "64"}, "whole numbers"),
        ({"stem_width": 64.0}, "whole numbers"),
        ({"zero_init_residual": "yes"}, "zero_init_residual must be true or false"),
        ({"dataset": ["shapes"]}, "dataset must be a name"),
        ({"extra": 1}, r"unknown fields \['extra'\]"),
        ({"author": "me"}, r"unknown fields \['author'\]"),
    ],
)
def test_an_untrusted_config_outside_the_limits_is_refused_before_anything_is_built(tmp_path, change, word):
    config, weights = saved(**change)
    with pytest.raises(CheckpointError, match=word):
        checkpoint.build(config, weights)


def test_a_config_that_is_not_json_or_too_big_is_refused(tmp_path):
    _, weights = saved()
    for raw in (b"{not json", b"[1, 2]", b'{"architecture": "resnet", "classes": [], "shortcuts": []}'):
        with pytest.raises(CheckpointError, match="not this app's checkpoint config"):
            checkpoint.build(raw, weights)
    with pytest.raises(CheckpointError, match="nested too deeply"):  # json.loads: RecursionError, in 40 kB
        checkpoint.build(b'{"architecture": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", weights)
    with pytest.raises(CheckpointError, match="config.json is 200,000 bytes; the limit is 100,000 bytes"):
        checkpoint.build(b" " * 200_000, weights)


def test_weights_over_the_limit_or_damaged_are_refused(tmp_path):
    config, weights = saved()
    with pytest.raises(CheckpointError, match="model.safetensors is 2.4 MB; the limit is 1.0 MB"):
        checkpoint.build(config, weights, CheckpointLimits(max_weights_bytes=1_000_000))
    with pytest.raises(CheckpointError, match="could not be read"):
        checkpoint.build(config, weights[:1000])
    with pytest.raises(CheckpointError, match="not a checkpoint of this app's ResNet"):
        checkpoint.build(config, safetensors.torch.save({"fc.weight": torch.zeros(10, 128)}))


def as_dtype(weights: bytes, dtype: torch.dtype) -> bytes:
    """model.safetensors with its float tensors stored as `dtype` (BN's num_batches_tracked stays int64)."""
    state = safetensors.torch.load(weights)
    return safetensors.torch.save({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_weights_saved_in_half_precision_load_as_the_models_own_float32(tmp_path, dtype):
    config, weights = saved()
    model = checkpoint.build(config, as_dtype(weights, dtype))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model(torch.zeros(1, 3, 32, 32)).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.float8_e4m3fn, torch.float64])
def test_weights_in_another_dtype_are_refused(dtype):
    # int8 packs 4x the float32 parameters into the file's size cap, to be widened to float32 in memory
    config, weights = saved()
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(CheckpointError, match=f"as {name}: weights must be float32, float16 or bfloat16") as e:
        checkpoint.build(config, as_dtype(weights, dtype))
    assert "float32、float16 或 bfloat16" in e.value.zh


@pytest.mark.parametrize(
    "arch",
    [
        ResNetConfig(),  # the notebook's net
        cifar_config(3),  # ResNet-20
        ResNetConfig(in_channels=1, stem_width=5, widths=(7, 9, 11, 13), blocks=(1, 2, 1, 3), num_classes=4),
        ResNetConfig(stem_width=8, widths=(8,), blocks=(2,), num_classes=2),  # no projection at all
    ],
)
def test_cost_counts_what_pytorch_counts(arch):
    # parameters as the built net has them; multiply-adds as torch's FLOP counter sees a forward pass (2 per MAC)
    with torch.device("meta"):  # shapes only: nothing allocated, nothing drawn from the RNG
        model = ResNet(arch)
        with FlopCounterMode(display=False) as flops:
            model(torch.empty(1, arch.in_channels, 32, 32))
    assert checkpoint.cost(arch) == (count_parameters(model), flops.get_total_flops() // 2)


def test_a_network_too_big_to_train_here_is_refused_before_its_weights_are_read():
    # a 512-wide stage of 4 blocks passes every width and block cap and, as int8, the file's size cap; it took
    # 16.5 s per training step on CPU where ResNet-56 takes 0.23 s
    config, _ = saved(stem_width=512, widths=[512], blocks=[4], shortcuts=[True] * 4)
    words = (
        r"too big to train here: 18,902,538 parameters and 19,342 million multiply-adds per image; the limits are "
        r"2,000,000 and 500 million \(the largest nets the app offers: ResNet-56, 855,770 parameters; notebook, "
        r"211 million multiply-adds\)"
    )
    with pytest.raises(CheckpointError, match=words) as e:
        checkpoint.build(config, b"never read")
    assert "18,902,538 个参数" in e.value.zh and "ResNet-56 有 855,770 个参数" in e.value.zh
    deep, _ = saved(widths=[128] * 4, blocks=[18] * 4, shortcuts=[True] * 72)  # 72 blocks: 1.6 G multiply-adds
    with pytest.raises(CheckpointError, match="too big to train here"):
        checkpoint.build(deep, b"never read")


@pytest.mark.parametrize("name", [*ARCHITECTURES, "ResNet-110"])
def test_every_net_the_app_offers_and_resnet_110_load_back(name):
    arch = cifar_config(18) if name == "ResNet-110" else architecture(name)
    with torch.device("meta"):
        model = ResNet(arch)
    state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}
    config = json.dumps(
        {"architecture": arch.to_dict(), "classes": CLASSES, "shortcuts": model.shortcuts, "dataset": "shapes"}
    )
    assert checkpoint.build(config.encode(), safetensors.torch.save(state)).config == arch


def test_a_folder_checkpoint_is_size_checked_before_it_is_read(tmp_path):
    model = small_model()
    checkpoint.save(model, tmp_path / "ckpt", "abc")
    assert same_outputs(checkpoint.load(tmp_path / "ckpt"), model)
    with pytest.raises(CheckpointError, match="model.safetensors is .* the limit is 1,000 bytes"):
        checkpoint.load(tmp_path / "ckpt", CheckpointLimits(max_weights_bytes=1000))
    (tmp_path / "ckpt" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="it has no config.json"):
        checkpoint.load(tmp_path / "ckpt")
    assert checkpoint.load(ROOT / "assets" / "shapes-resnet").classes[0] == "circle"  # the shipped model passes


# --- uploaded zips -------------------------------------------------------------------------------------------
def zipped(path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_an_uploaded_zip_loads_in_memory_and_its_members_are_capped_before_reading(tmp_path):
    config, weights = saved()
    ok = {"config.json": config, "model.safetensors": weights}
    assert checkpoint.load_upload(zipped(tmp_path / "ok.zip", ok)).classes == CLASSES
    assert checkpoint.load_upload(zipped(tmp_path / "card.zip", {**ok, "README.md": b"# mine"})).classes == CLASSES
    bomb = zipped(tmp_path / "bomb.zip", {"config.json": config, "model.safetensors": b"\0" * 30_000_000})
    assert bomb.stat().st_size < 100_000
    with pytest.raises(CheckpointError, match="model.safetensors is 30.0 MB; the limit is 20.0 MB"):
        checkpoint.load_upload(bomb)  # a few kB packed; never unpacked
    with pytest.raises(CheckpointError, match="holds config.json and model.safetensors"):
        checkpoint.load_upload(zipped(tmp_path / "extra.zip", {**ok, "run.sh": b"rm -rf"}))
    with pytest.raises(CheckpointError, match="it has no model.safetensors"):
        checkpoint.load_upload(zipped(tmp_path / "half.zip", {"config.json": config}))


def test_a_zip_too_big_on_disk_is_refused_before_it_is_opened(tmp_path):
    config, weights = saved()
    path = zipped(tmp_path / "ok.zip", {"config.json": config, "model.safetensors": weights}, zipfile.ZIP_STORED)
    with pytest.raises(CheckpointError, match="that zip is 2.4 MB; a checkpoint zip's limit is 1.0 MB"):
        checkpoint.load_upload(path, CheckpointLimits(max_zip_bytes=1_000_000))
    path.write_bytes(b"\0" * 200 + path.read_bytes())  # not even a zip: the size alone decides
    with pytest.raises(CheckpointError, match="that zip is 2.4 MB"):
        checkpoint.load_upload(path, CheckpointLimits(max_zip_bytes=1_000_000))


def test_a_damaged_or_false_zip_is_a_message(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"PK but not really")
    with pytest.raises(CheckpointError, match="could not be read as a zip"):
        checkpoint.load_upload(tmp_path / "x.zip")
    config, weights = saved()
    raw = bytearray(zipped(tmp_path / "ok.zip", {"config.json": config, "model.safetensors": weights}).read_bytes())
    start = raw.index(b"model.safetensors") + 40  # inside the member's compressed data
    raw[start : start + 2000] = os.urandom(2000)
    (tmp_path / "bad.zip").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="could not be read as a zip"):
        checkpoint.load_upload(tmp_path / "bad.zip")


# --- Hub repos -----------------------------------------------------------------------------------------------
class FakeHub(ThreadingHTTPServer):
    """The Hub's HTTP API, as huggingface_hub calls it, over repos held in memory: {repo_id: {path: bytes}}.
    `sizes` overrides the size the metadata reports; `log` is every (method, path, authorization) received."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.repos: dict[str, dict[str, bytes]] = {}
        self.sizes: dict[tuple[str, str], int] = {}
        self.writers: dict[str, str] = {}  # repo -> the token that may write to it
        self.log: list[tuple[str, str, str]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.fail: tuple[int, str] | None = None  # (status, the Hub's message): every request gets this answer
        self.silent_on = ""  # a request whose path holds this gets no answer until `release` is set
        self.release = threading.Event()


class Handler(BaseHTTPRequestHandler):
    SHA = "a" * 40

    def log_message(self, *args):
        pass

    def reply(self, status=200, body=b"", headers=None, json_body=None):
        if json_body is not None:
            body, headers = json.dumps(json_body).encode(), {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def route(self):
        hub: FakeHub = self.server
        path = self.path.split("?")[0]
        hub.log.append((self.command, path, self.headers.get("Authorization", "")))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if hub.silent_on and hub.silent_on in path:
            hub.release.wait()  # accepted, and never answered
            return
        if hub.fail:
            return self.reply(hub.fail[0], json_body={"error": hub.fail[1]})
        parts = path.strip("/").split("/")
        not_found = {"X-Error-Code": "RepoNotFound"}
        if parts[:2] == ["api", "models"] and (len(parts) == 4 or parts[4] == "revision"):  # model info
            repo = "/".join(parts[2:4])
            if repo not in hub.repos:
                return self.reply(404, headers=not_found)
            siblings = [{"rfilename": f, "size": hub.sizes.get((repo, f), len(b))} for f, b in hub.repos[repo].items()]
            return self.reply(json_body={"id": repo, "sha": self.SHA, "siblings": siblings})
        if len(parts) >= 5 and parts[2] == "resolve":  # a file: HEAD for its metadata, then GET
            repo, name = "/".join(parts[:2]), "/".join(parts[4:])
            if name not in hub.repos.get(repo, {}):
                return self.reply(404, headers=not_found)
            data = hub.repos[repo][name]
            return self.reply(body=data, headers={"X-Repo-Commit": self.SHA, "ETag": f'"{hash(data)}"'})
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if path == "/api/validate-yaml":  # a commit with a README.md has its metadata checked first
            return self.reply(json_body={"errors": [], "warnings": []})
        if path == "/api/repos/create":
            repo = f"{json.loads(body).get('organization') or 'you'}/{json.loads(body)['name']}"
            if hub.writers.get(repo) != token:
                return self.reply(403, json_body={"error": "You don't have the rights to create a model here"})
            hub.repos.setdefault(repo, {})
            return self.reply(json_body={"url": f"{hub.url}/{repo}"})
        if parts[:2] == ["api", "models"] and parts[4] == "preupload":
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in json.loads(body)["files"]
            ]
            return self.reply(json_body={"files": files})
        if parts[:2] == ["api", "models"] and parts[4] == "commit":
            repo = "/".join(parts[2:4])
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    hub.repos[repo][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            return self.reply(json_body={"commitUrl": f"{hub.url}/{repo}/commit/{self.SHA}", "commitOid": self.SHA})
        return self.reply(404)

    do_GET = do_HEAD = do_POST = route


@pytest.fixture()
def fake_hub(monkeypatch, tmp_path):
    hub = FakeHub()
    threading.Thread(target=hub.serve_forever, args=(0.01,), daemon=True).start()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
    template = hub.url + "/{repo_id}/resolve/{revision}/{filename}"  # made from ENDPOINT at import
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_TOKEN", "hf_the_servers_own_token")  # a server may be logged in; learners never use it
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    yield hub
    hub.release.set()
    hub.shutdown()
    hub.server_close()


def hub_files(model, classes) -> dict[str, bytes]:
    return checkpoint.files(checkpoint.to_hub(model, classes, "shapes"))


def test_a_hub_repo_loads_fetching_only_its_two_files_and_leaves_nothing_on_disk(fake_hub, tmp_path):
    model = small_model()
    fake_hub.repos["you/net"] = {**hub_files(model, "abc"), "huge.bin": b"\0" * 1000}
    loaded = checkpoint.load_repo(" you/net ")
    assert same_outputs(loaded, model) and loaded.classes == ["a", "b", "c"]
    fetched = {path.rsplit("/", 1)[-1] for method, path, _ in fake_hub.log if "/resolve/" in path}
    assert fetched == {"config.json", "model.safetensors"}
    assert all("hf_the_servers_own_token" not in auth for *_, auth in fake_hub.log)
    assert files_in(tmp_path) == ["tmp"]  # no Hub cache, no temporary folder left


def test_a_hub_repo_over_the_limits_is_refused_before_any_download(fake_hub):
    fake_hub.repos["you/big"] = hub_files(small_model(), "abc")
    fake_hub.sizes["you/big", "model.safetensors"] = 3_000_000_000
    with pytest.raises(CheckpointError, match="you/big: model.safetensors is 3000.0 MB; the limit is 20.0 MB"):
        checkpoint.load_repo("you/big")
    fake_hub.repos["you/notes"] = {"README.md": b"# just notes"}
    with pytest.raises(CheckpointError, match="it has no config.json and no model.safetensors"):
        checkpoint.load_repo("you/notes")
    assert not [path for _, path, _ in fake_hub.log if "/resolve/" in path]


@pytest.mark.parametrize("text", ["/etc/passwd", "../x", "assets/../app.py", "a/b/c", "", "you/na me", "name", "C:\\x"])
def test_a_repo_id_that_is_not_owner_slash_name_is_refused_unread(fake_hub, text):
    with pytest.raises(CheckpointError, match="not a Hugging Face repo id"):
        checkpoint.load_repo(text)
    assert fake_hub.log == []


def test_a_repo_shaped_like_a_local_folder_is_fetched_from_the_hub_not_read_from_disk(fake_hub, monkeypatch):
    # "assets/shapes-resnet" is a checkpoint folder on this server, and a valid repo id: from_pretrained would load
    # the folder. Here the Hub has no such repo, so the learner is told so.
    monkeypatch.chdir(ROOT)
    assert Path("assets/shapes-resnet/model.safetensors").is_file()
    with pytest.raises(CheckpointError, match="no public model repo assets/shapes-resnet on the Hugging Face Hub"):
        checkpoint.load_repo("assets/shapes-resnet")
    assert fake_hub.log[0][:2] == ("GET", "/api/models/assets/shapes-resnet")


@pytest.mark.parametrize("how", ["offline", "closed port"])
def test_without_the_hub_a_load_or_push_says_it_could_not_reach_it(monkeypatch, how):
    if how == "offline":
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    else:
        with socket.socket() as free:  # a port nothing listens on once this closes
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    reach = "could not reach the Hugging Face Hub for you/net .*; check the network"
    with pytest.raises(CheckpointError, match=reach):
        checkpoint.load_repo("you/net")
    with pytest.raises(UserError, match=reach):
        checkpoint.push(checkpoint.to_hub(small_model(), "abc"), "you/net", "hf_token")


@pytest.fixture()
def impatient():
    """The Hub is given 0.5 s, not HUB_TIMEOUT_S. huggingface_hub's shared client takes its timeout when it is made:
    it is made again with this one, and again after."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint, "HUB_TIMEOUT_S", 0.5)
        huggingface_hub.close_session()
        yield
    huggingface_hub.close_session()


def within(seconds: float, call) -> BaseException | None:
    """What `call()` raised (None if it returned), asserting it ended within `seconds`: a call with no timeout would
    otherwise hang the test run as it hung the app (400+ s)."""
    ended = []

    def run():
        try:
            call()
            ended.append(None)
        except Exception as e:  # noqa: BLE001 -- handed to the test to look at
            ended.append(e)

    start = time.monotonic()
    threading.Thread(target=run, daemon=True).start()
    while not ended and time.monotonic() - start < seconds:
        time.sleep(0.05)
    assert ended, f"still waiting for the Hub after {seconds} s"
    return ended[0]


@pytest.mark.parametrize(
    "action, silent_on",
    [
        ("load", "/api/models/you/net"),  # the model info, with the files' sizes
        ("load", "/resolve/"),  # a file's download
        ("push", "/api/repos/create"),
        ("push", "/commit/"),  # the commit, once the repo exists
    ],
)
def test_a_hub_that_accepts_and_never_answers_is_given_up_on_with_a_message(fake_hub, impatient, action, silent_on):
    fake_hub.repos["you/net"] = hub_files(small_model(), "abc")
    fake_hub.writers["you/net"] = "hf_write"
    fake_hub.silent_on = silent_on
    if action == "load":
        error = within(10, lambda: checkpoint.load_repo("you/net"))
    else:
        error = within(10, lambda: checkpoint.push(checkpoint.to_hub(small_model(), "abc"), "you/net", "hf_write"))
    assert isinstance(error, CheckpointError), error
    assert str(error) == "the Hugging Face Hub did not answer within 0.5 s for you/net; try again later"
    assert error.zh == "Hugging Face Hub 在 0.5 秒内没有回应 you/net 的请求；请稍后再试"
    assert any(silent_on in path for _, path, _ in fake_hub.log)


def test_a_hub_dataset_download_that_never_answers_is_said_in_seconds(fake_hub, impatient, monkeypatch, tmp_path):
    """hf_hub_download retried a silent Hub's HEAD six times at 60 s each: a learner who picked cifar10 waited 396 s
    for "could not reach". One HEAD now, with the dataset download's own timeout."""
    from resnet import data, hub

    monkeypatch.setattr(hub, "CACHE", tmp_path / "datasets")
    monkeypatch.setattr(hub, "HUB_TIMEOUT", 0.5)
    fake_hub.silent_on = "/resolve/"
    error = within(10, lambda: hub.load_hub("cifar10", local_dir=tmp_path / "files"))
    assert isinstance(error, data.DataError) and "Hugging Face Hub" in str(error), error
    assert any("/resolve/" in path for _, path, _ in fake_hub.log)


@pytest.mark.parametrize(
    "status, reason, later",
    [(400, "Bad Request", False), (429, "Too Many Requests", True), (500, "Internal Server Error", True)],
)
def test_an_error_from_the_hub_says_its_status_and_the_hubs_words_not_check_the_network(
    fake_hub, status, reason, later
):
    fake_hub.fail = (status, "slow  down,\nplease")
    refused = "refused" if status < 500 else "failed on"
    for call in (
        lambda: checkpoint.load_repo("you/net"),
        lambda: checkpoint.push(checkpoint.to_hub(small_model(), "abc"), "you/net", "hf_write"),
    ):
        with pytest.raises(CheckpointError) as e:
            call()
        said = f"{status} {reason} — slow down, please"  # on one line: it is shown as one
        assert str(e.value).startswith(f"the Hugging Face Hub {refused} the request for you/net: {said}")
        assert ("; wait a minute and try again" in str(e.value)) == later and "network" not in str(e.value)
        assert said in e.value.zh and ("请稍等一分钟再试" in e.value.zh) == later


def test_a_pushed_checkpoint_loads_back_from_the_hub_with_its_card(fake_hub):
    fake_hub.writers["you/net"] = "hf_write"
    model = small_model()
    url = checkpoint.push(checkpoint.to_hub(model, "abc", "shapes"), "you/net", "hf_write", {"steps": 20})
    assert url == f"{fake_hub.url}/you/net"
    assert sorted(fake_hub.repos["you/net"]) == ["README.md", "config.json", "model.safetensors"]
    card = ModelCard(fake_hub.repos["you/net"]["README.md"].decode())
    assert card.data.library_name == "resnet-playground" and 'checkpoint.load_repo("you/net")' in card.text
    assert same_outputs(checkpoint.load_repo("you/net"), model)
    with pytest.raises(CheckpointError, match="refused the push to you/other: the token needs write access") as e:
        checkpoint.push(checkpoint.to_hub(model, "abc"), "you/other", "hf_secret_read_only")
    assert "hf_secret" not in str(e.value)
    with pytest.raises(CheckpointError, match="needs a write token"):
        checkpoint.push(checkpoint.to_hub(model, "abc"), "you/net", " ")
