"""Checkpoints a learner can hand on: model.safetensors + config.json + a README.md card, made as bytes in memory
for a folder (`save`), one zip (`download_zip`) or a Hub repo (`push`). One from outside is untrusted: sizes are
checked against `CheckpointLimits` before a byte is read, config.json (and the size of the net it asks for) before
anything is built, a repo id is only an id, and the Hub is given `HUB_TIMEOUT_S` to answer. Models are built on the
meta device, so no save or load draws from torch's global RNG (seeded runs hold).
"""

import dataclasses
import json
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

try:  # huggingface-hub's HTTP client: its HTTPError is a refused connection, a timeout or an error status
    import httpx2
except ImportError:  # huggingface-hub before 2.0 (a GPU image's, say) uses httpx
    import httpx as httpx2
import safetensors.torch
import torch
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, hf_hub_url
from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import (
    build_hf_headers,
    get_session,
    hf_raise_for_status,
    set_client_factory,
    validate_repo_id,
)

from .errors import UserError
from .model import ARCHITECTURES, ResNet, ResNetConfig, architecture, count_parameters

HUB_TIMEOUT_S = 20.0  # seconds the Hub may keep silent (connecting, or between two bytes) before a load or push stops


def _hub_client() -> "httpx2.Client":
    """huggingface_hub's shared HTTP client as the library makes it, but with `HUB_TIMEOUT_S`: its own has none
    (timeout=None), so a Hub that accepts a connection and never answers held a learner's push for good."""
    client = default_client_factory()
    client.timeout = httpx2.Timeout(HUB_TIMEOUT_S)
    return client


try:  # a private name of huggingface_hub (1.x and 2.4 have it): without it, the library's own client, untimed
    from huggingface_hub.utils._http import default_client_factory
except ImportError:  # pragma: no cover -- another version's layout
    pass
else:
    set_client_factory(_hub_client)  # at import, before any request: a later swap closes the client others use


class CheckpointError(UserError):
    """A checkpoint we cannot use; the message is meant for the user."""


class HubResNet(ResNet):
    """A ResNet that knows what it was trained to tell apart; __init__ takes config.json's fields as they are."""

    def __init__(self, architecture: dict, classes: list[str], shortcuts: list[bool], dataset: str = ""):
        super().__init__(ResNetConfig(**architecture))
        self.classes, self.dataset = list(classes), dataset
        for i, on in enumerate(shortcuts, 1):
            self.set_shortcut(on, i)


HALF_DTYPES = (torch.float16, torch.bfloat16)  # accepted for float tensors, widened to the model's float32


def _built(kwargs: dict, state: dict[str, torch.Tensor]) -> HubResNet:
    """HubResNet(**kwargs) holding exactly `state`'s tensors, in eval mode. Built on the meta device: no random
    init to overwrite, so nothing is drawn from torch's global RNG (a seeded Reset may be drawing from it now)."""
    with torch.device("meta"):
        model = HubResNet(**kwargs)
    expected = model.state_dict()  # meta tensors: names, shapes and dtypes, no memory
    # float16 or bfloat16 for a float tensor (half the bytes) is widened; nothing narrower: int8 weights would
    # pack 4x the float32 parameters the file's size cap allows
    odd = [k for k, v in state.items() if k in expected and v.dtype != expected[k].dtype]
    odd = [k for k in odd if not (expected[k].is_floating_point() and state[k].dtype in HALF_DTYPES)]
    if odd:
        raise CheckpointError(
            f"model.safetensors holds {odd[0]} as {str(state[odd[0]].dtype).removeprefix('torch.')}: weights must "
            "be float32, float16 or bfloat16",
            zh=f"model.safetensors 中的 {odd[0]} 是 {str(state[odd[0]].dtype).removeprefix('torch.')}："
            "权重必须是 float32、float16 或 bfloat16",
        )
    # assign keeps a tensor's own dtype: one saved in fp16 would then meet fp32 inputs
    state = {k: v.to(expected[k].dtype) if k in expected else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)  # missing, unexpected or mis-shaped: RuntimeError
    return model.eval()


def to_hub(model: ResNet, classes, dataset: str = "") -> HubResNet:
    """A CPU copy of a live model with its classes and shortcut switches. Take it under the session's lock; save,
    zip or push the copy without it."""
    # contiguous copies: a session keeps its conv weights channels_last, which safetensors will not write
    state = {
        k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True) for k, v in model.state_dict().items()
    }
    kwargs = {"architecture": model.config.to_dict(), "classes": list(classes), "shortcuts": model.shortcuts}
    return _built({**kwargs, "dataset": dataset}, state)


# --- writing -------------------------------------------------------------------------------------------------
FILES = ("config.json", "model.safetensors")  # a checkpoint is these two; README.md, the card, is read by people


def model_card(model: HubResNet, stats: dict | None = None, repo_id: str | None = None) -> ModelCard:
    """A Hub model card: architecture, dataset, training `stats` ({"steps": int, "held_out_acc": 0..1, any other
    key: shown as it is}), shortcut states and how to load it; metadata for the Hub in its YAML header."""
    from .hub import HUB_DATASETS  # the Hub's id for a dataset that came from the Hub

    cfg, stats = model.config, dict(stats or {})
    acc = stats.pop("held_out_acc", None)
    hub_data = HUB_DATASETS.get(model.dataset)
    name = f"ResNet-{cfg.depth}" + (f" on {model.dataset}" if model.dataset else "")
    data = ModelCardData(
        license="mit",
        library_name="resnet-playground",
        pipeline_tag="image-classification",
        tags=["resnet", "residual", "image-classification"],
        datasets=[hub_data.repo] if hub_data else None,
        model_name=name,
        eval_results=None
        if acc is None
        else [
            EvalResult(
                task_type="image-classification",
                dataset_type=hub_data.repo if hub_data else model.dataset or "unknown",
                dataset_name=model.dataset or "unknown",
                dataset_split="test",
                metric_type="accuracy",
                metric_value=round(float(acc), 4),
            )
        ],
    )
    shortcuts = ", ".join(f"{i}: {'on' if on else 'off'}" for i, on in enumerate(model.shortcuts, 1))
    training = [f"| dataset | {model.dataset or 'not recorded'} |"]
    if "steps" in stats:
        training.append(f"| steps trained | {int(stats.pop('steps')):,} |")
    training.append(f"| held-out accuracy | {'not measured' if acc is None else f'{float(acc):.1%}'} |")
    training += [f"| {key} | {value} |" for key, value in stats.items()]
    repo = repo_id or "you/your-model"
    body = f"""
# {name}

A residual network (He et al., 2016) with {cfg.depth} weighted layers, for {cfg.in_channels}-channel 32x32 images,
trained in ResNet Playground, an app for learning what residual connections do.

## Architecture

| | |
|---|---|
| depth (weighted layers: stem + 2 per block + fc) | {cfg.depth} |
| stem width | {cfg.stem_width} channels |
| stage widths | {", ".join(map(str, cfg.widths))} channels |
| blocks per stage | {", ".join(map(str, cfg.blocks))} |
| parameters | {count_parameters(model):,} |
| classes | {len(model.classes)}: {", ".join(model.classes)} |

Shortcut of each block (off: the block is the "plain" relu(F(x)), no "+ x"): {shortcuts}.

## Training

| | |
|---|---|
{chr(10).join(training)}

## How to load it

In the app: the "Your data, your model" tab, type `{repo}` as the repo id (or upload the zip from Download)
and press Load.
In Python, with this project's `resnet` package:

```python
from resnet import checkpoint

model = checkpoint.load_repo("{repo}")  # or checkpoint.load_upload("model.zip"), checkpoint.load("folder")
session = checkpoint.session_from(model)  # train on from here
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def files(model: HubResNet, stats: dict | None = None, repo_id: str | None = None) -> dict[str, bytes]:
    """A checkpoint as bytes, {file name: contents}: the one format a folder, a zip and a Hub repo all hold."""
    config = {
        "architecture": model.config.to_dict(),
        "classes": model.classes,
        "dataset": model.dataset,
        "shortcuts": model.shortcuts,
    }
    return {
        "config.json": json.dumps(config, indent=2, sort_keys=True).encode(),
        "model.safetensors": safetensors.torch.save(model.state_dict(), metadata={"format": "pt"}),
        "README.md": str(model_card(model, stats, repo_id)).encode(),
    }


def save(model: ResNet, directory: str | Path, classes, dataset: str = "", card: dict | None = None) -> Path:
    """Write the checkpoint's files into `directory` (created if needed); `card`: training stats for the card."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files(to_hub(model, classes, dataset), card).items():
        (directory / name).write_bytes(data)
    return directory


def download_zip(model: ResNet, classes, dataset: str, path: str | Path, card: dict | None = None) -> Path:
    """The checkpoint as ONE zip file at `path` (its folder created if needed), built from bytes in memory:
    nothing else is written. `card`: training stats for the model card (see `model_card`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files(to_hub(model, classes, dataset), card).items():
            # float weights barely compress (-9% for 100x the time): stored; the text files deflated
            z.writestr(name, data, zipfile.ZIP_STORED if name == "model.safetensors" else None)
    return path


def push(model: HubResNet, repo_id: str, token: str, card: dict | None = None) -> str:
    """Upload a checkpoint (`to_hub`'s copy) and its card to a Hub model repo in one commit, creating the repo if
    needed; returns the repo's URL. The token is used for this call only, and never appears in a message."""
    repo_id = check_repo_id(repo_id)
    if not (token or "").strip():
        raise CheckpointError(
            "a push needs a write token: make one at huggingface.co/settings/tokens",
            zh="推送需要一个写入令牌：在 huggingface.co/settings/tokens 创建一个",
        )
    api = HfApi(token=token.strip())
    payload = files(model, card, repo_id)
    try:
        url = api.create_repo(repo_id, exist_ok=True)
        api.create_commit(
            repo_id,
            [CommitOperationAdd(name, data) for name, data in payload.items()],
            commit_message="Checkpoint from ResNet Playground",
        )
    except (httpx2.HTTPError, OSError) as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403) or isinstance(e, RepositoryNotFoundError):  # someone else's repo, or a bad token
            raise CheckpointError(
                f"the Hugging Face Hub refused the push to {repo_id}: the token needs write access to it",
                zh=f"Hugging Face Hub 拒绝了推送到 {repo_id}：令牌需要对它有写入权限",
            ) from None
        raise hub_failed(repo_id, e) from None
    return str(url)


# --- reading untrusted checkpoints ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointLimits:
    """What an untrusted checkpoint may ask the server to read and build; anything more is refused unread."""

    max_config_bytes: int = 100_000  # config.json (this app writes ~0.5 kB)
    max_weights_bytes: int = 20_000_000  # model.safetensors (the notebook's net: 2.4 MB; ResNet-56: 3.4 MB)
    max_zip_bytes: int = 21_000_000  # an uploaded zip as stored: the two files and a card, compressed or not
    max_stages: int = 4  # stages of blocks (the notebook's net has 2, the paper's CIFAR nets 3)
    max_blocks: int = 18  # blocks per stage (ResNet-110 has 18)
    max_width: int = 512  # channels of the stem or any stage
    max_classes: int = 1000  # outputs of the classifier (at least 2)
    in_channels: tuple[int, ...] = (1, 3)  # grayscale or RGB
    # what a training step costs: a 512-wide stage of 4 blocks passes every cap above, has 18.9 M parameters and 19 G
    # multiply-adds per image, and held the CPU's one training slot 16.5 s per batch-64 step (ResNet-56: 0.23 s)
    max_parameters: int = 2_000_000  # ResNet-56: 0.86 M; ResNet-110 (1.7 M) still loads
    max_macs: int = 500_000_000  # multiply-adds of one forward pass on a 32x32 image (the notebook's net: 211 M)


def cost(cfg: ResNetConfig) -> tuple[int, int]:
    """(parameters, multiply-adds of one forward pass on a 32x32 image) of the net `cfg` describes, counted from the
    config as ResNet builds it, so an untrusted one is measured before anything is built. Convs and fc make the
    multiply-adds (BN, relu and "+ x" are a few per activation); each BN adds 2 parameters per channel."""
    side, c_in = 32, cfg.in_channels
    params = macs = 0

    def conv(c_out: int, k: int = 3) -> None:  # a conv from c_in channels onto a side x side output, then its BN
        nonlocal params, macs
        params += c_in * c_out * k * k + 2 * c_out
        macs += c_in * c_out * k * k * side * side

    conv(cfg.stem_width)
    c_in = cfg.stem_width
    for stage, (width, n) in enumerate(zip(cfg.widths, cfg.blocks)):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            side = -(-side // stride)  # a 3x3 conv with padding 1, or a 1x1, at stride 2: ceil(side / 2)
            conv(width)  # conv1
            if stride != 1 or c_in != width:
                conv(width, k=1)  # the projection shortcut, from the block's input too
            c_in = width
            conv(width)  # conv2
    params += c_in * cfg.num_classes + cfg.num_classes  # fc, after the global average pool
    macs += c_in * cfg.num_classes
    return params, macs


# the largest nets a learner can pick, by each measure: what the app trains, and the scale of the caps
OFFERED = {name.split(" (")[0]: cost(architecture(name)) for name in ARCHITECTURES}
LIMITS = CheckpointLimits()
CONFIG_KEYS = {"architecture", "classes", "shortcuts", "dataset"}  # config.json's fields; dataset is optional
ARCH_KEYS = {f.name for f in dataclasses.fields(ResNetConfig)}  # zero_init_residual is optional


def mb(n: int | None) -> str:
    return "of unknown size" if n is None else f"{n / 1e6:.1f} MB" if n >= 1_000_000 else f"{n:,} bytes"


def check_sizes(sizes: dict[str, int | None], source: str, limits: CheckpointLimits = LIMITS) -> None:
    """The checkpoint files' sizes as listed (a zip's index, a folder, the Hub's metadata) against `limits`, before
    any is read. Raises CheckpointError naming the file and its limit."""
    missing = [name for name in FILES if name not in sizes]
    if missing:
        raise CheckpointError(
            f"{source} is not a checkpoint of this app: it has no {' and no '.join(missing)}",
            zh=f"{source} 不是本应用的检查点：它缺少 {'、'.join(missing)}",
        )
    for name, cap in zip(FILES, (limits.max_config_bytes, limits.max_weights_bytes)):
        if sizes[name] is None or sizes[name] > cap:
            raise CheckpointError(
                f"{source}: {name} is {mb(sizes[name])}; the limit is {mb(cap)}",
                zh=f"{source}：{name} 有 {mb(sizes[name])}；上限是 {mb(cap)}",
            )


def read_config(raw: bytes, limits: CheckpointLimits = LIMITS) -> dict:
    """config.json (its size already checked: `check_sizes`) -> HubResNet's arguments, every field checked
    against `limits` before anything is built."""
    try:
        config = json.loads(raw)
        arch, classes, shortcuts = config["architecture"], config["classes"], config["shortcuts"]
        widths, blocks = list(arch["widths"]), list(arch["blocks"])
        numbers = [arch["in_channels"], arch["num_classes"], arch["stem_width"], *widths, *blocks]
        unknown = sorted(set(config) - CONFIG_KEYS) + sorted(set(arch) - ARCH_KEYS)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"config.json is not this app's checkpoint config ({type(e).__name__}: {e})",
            zh=f"config.json 不是本应用的检查点配置（{type(e).__name__}: {e}）",
        ) from None
    except RecursionError:  # [[[[...]]]] nested deeper than Python's stack: 100 kB of brackets is enough
        raise CheckpointError(
            "config.json is not this app's checkpoint config: it is nested too deeply",
            zh="config.json 不是本应用的检查点配置：嵌套层数太深",
        ) from None
    if unknown:
        raise CheckpointError(
            f"config.json is not this app's checkpoint config: unknown fields {unknown[:5]}",
            zh=f"config.json 不是本应用的检查点配置：未知字段 {unknown[:5]}",
        )
    if not all(type(n) is int for n in numbers):
        raise CheckpointError("config.json: sizes must be whole numbers", zh="config.json：尺寸必须是整数")
    if type(arch.get("zero_init_residual", False)) is not bool:
        raise CheckpointError(
            "config.json: zero_init_residual must be true or false",
            zh="config.json：zero_init_residual 必须是 true 或 false",
        )
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(
            "config.json: classes must be a list of names", zh="config.json：classes 必须是类别名称的列表"
        )
    if not isinstance(config.get("dataset", ""), str):
        raise CheckpointError("config.json: dataset must be a name", zh="config.json：dataset 必须是一个名称")
    problems = []
    if not 1 <= len(widths) == len(blocks) <= limits.max_stages:
        problems.append(f"1 to {limits.max_stages} stages, each with a width and a block count")
    if not all(1 <= n <= limits.max_blocks for n in blocks):
        problems.append(f"1 to {limits.max_blocks} blocks per stage")
    if not all(1 <= w <= limits.max_width for w in [arch["stem_width"], *widths]):
        problems.append(f"widths from 1 to {limits.max_width} channels")
    if arch["in_channels"] not in limits.in_channels:
        problems.append(f"in_channels one of {list(limits.in_channels)}")
    if not 2 <= arch["num_classes"] <= limits.max_classes or len(classes) != arch["num_classes"]:
        problems.append(f"2 to {limits.max_classes} classes, one name per output")
    if not isinstance(shortcuts, list) or len(shortcuts) != sum(blocks) or not all(type(b) is bool for b in shortcuts):
        problems.append("one shortcut switch (true/false) per block")
    if problems:
        raise CheckpointError(
            "This checkpoint is outside what the app builds: it needs " + "; ".join(problems) + ".",
            zh="这个检查点超出了本应用能构建的范围，需要满足：" + "；".join(problems) + "。",
        )
    params, macs = cost(ResNetConfig(**arch))
    if params > limits.max_parameters or macs > limits.max_macs:
        (net_p, (most_p, _)), (net_m, (_, most_m)) = (max(OFFERED.items(), key=lambda kv: kv[1][i]) for i in (0, 1))
        raise CheckpointError(
            f"This checkpoint's network is too big to train here: {params:,} parameters and {macs / 1e6:,.0f} million "
            f"multiply-adds per image; the limits are {limits.max_parameters:,} and {limits.max_macs / 1e6:,.0f} "
            f"million (the largest nets the app offers: {net_p}, {most_p:,} parameters; {net_m}, "
            f"{most_m / 1e6:,.0f} million multiply-adds).",
            zh=f"这个检查点的网络太大，无法在这里训练：{params:,} 个参数，每张图片 {macs / 1e6:,.0f} 百万次乘加；"
            f"上限是 {limits.max_parameters:,} 个参数和 {limits.max_macs / 1e6:,.0f} 百万次乘加（本应用提供的最大网络："
            f"{net_p} 有 {most_p:,} 个参数；{net_m} 每张图片 {most_m / 1e6:,.0f} 百万次乘加）。",
        )
    return {
        "architecture": dict(arch),
        "classes": classes,
        "shortcuts": shortcuts,
        "dataset": config.get("dataset", ""),
    }


def build(config_raw: bytes, weights_raw: bytes, limits: CheckpointLimits = LIMITS) -> HubResNet:
    """A checkpoint's two files, as bytes -> the model, strictly: every tensor present and of the right shape."""
    check_sizes({"config.json": len(config_raw), "model.safetensors": len(weights_raw)}, "this checkpoint", limits)
    kwargs = read_config(config_raw, limits)
    try:
        state = safetensors.torch.load(weights_raw)
    except Exception as e:  # noqa: BLE001 -- safetensors raises its own error kinds for a damaged file
        raise CheckpointError(
            f"model.safetensors could not be read ({type(e).__name__})",
            zh=f"无法读取 model.safetensors（{type(e).__name__}）",
        ) from None
    try:
        return _built(kwargs, state)
    except RuntimeError as e:  # missing, unexpected or mis-shaped tensors
        raise CheckpointError(
            f"not a checkpoint of this app's ResNet: its weights do not fit its config.json ({_first_problem(e)})",
            zh=f"不是本应用 ResNet 的检查点：权重与它的 config.json 不符（{_first_problem(e)}）",
        ) from None


def _first_problem(e: RuntimeError) -> str:
    """load_state_dict's message lists every tensor; the first line after its heading is enough to say why."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[1][:200] if len(lines) > 1 else lines[0][:200]


def load(directory: str | Path, limits: CheckpointLimits = LIMITS) -> HubResNet:
    """A checkpoint folder on this machine, chosen by the app (the shipped model, or one `save` wrote); never a
    name a learner typed."""
    directory = Path(directory)
    sizes = {name: (directory / name).stat().st_size for name in FILES if (directory / name).is_file()}
    check_sizes(sizes, directory.name, limits)
    return build(*((directory / name).read_bytes() for name in FILES), limits)


def load_upload(zip_path: str | Path, limits: CheckpointLimits = LIMITS) -> HubResNet:
    """A checkpoint zip (from Download) -> the model, read in memory: the zip's size and its members' sizes are
    checked before reading, and nothing is extracted, so nothing is written."""
    size = Path(zip_path).stat().st_size
    if size > limits.max_zip_bytes:
        raise CheckpointError(
            f"that zip is {mb(size)}; a checkpoint zip's limit is {mb(limits.max_zip_bytes)}",
            zh=f"这个 zip 有 {mb(size)}；检查点 zip 的上限是 {mb(limits.max_zip_bytes)}",
        )
    try:
        with zipfile.ZipFile(zip_path) as z:
            sizes = {info.filename: info.file_size for info in z.infolist()}  # as unpacked, from the zip's index
            if not set(sizes) <= {*FILES, "README.md"}:
                raise CheckpointError(
                    "a checkpoint zip holds config.json and model.safetensors (and a README.md card); "
                    f"this one holds {sorted(sizes)[:5]}",
                    zh="检查点 zip 应包含 config.json 和 model.safetensors（以及 README.md 模型卡）；"
                    f"这个包含 {sorted(sizes)[:5]}",
                )
            check_sizes(sizes, "that zip", limits)
            raw = [z.read(name) for name in FILES]  # the card is for people: never read
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as e:
        # not a zip, damaged, encrypted, or packed in a way Python cannot unpack
        raise CheckpointError(
            f"that file could not be read as a zip ({type(e).__name__})",
            zh=f"这个文件无法作为 zip 读取（{type(e).__name__}）",
        ) from None
    return build(*raw, limits)


def check_repo_id(repo_id: str) -> str:
    """A Hub model repo id as typed -> the id; never a path (from_pretrained would try a folder on this server)."""
    repo_id = (repo_id or "").strip()
    try:
        validate_repo_id(repo_id)  # the Hub's own rules: no "..", no leading "/" or ".", 96 characters at most
    except HFValidationError:
        repo_id = ""
    if repo_id.count("/") != 1:  # owner/name, as the app asks for
        raise CheckpointError(
            "that is not a Hugging Face repo id; type one like you/resnet-playground",
            zh="这不是 Hugging Face 仓库 ID；请输入类似 you/resnet-playground 的 ID",
        )
    return repo_id


def hub_failed(repo_id: str, e: Exception) -> CheckpointError:
    """What went wrong with a Hub call, in words: an error status with the Hub's own message (a rate limit or an
    outage is not the learner's network), no answer within HUB_TIMEOUT_S, or no connection at all."""
    response = getattr(e, "response", None)
    if response is not None:
        status, reason = response.status_code, response.reason_phrase  # httpx fills in the phrase: "Not Found"
        said = " ".join(str(getattr(e, "server_message", None) or "").split())[:200]  # the Hub's words, one line
        said = f" — {said}" if said else ""
        later = status == 429 or status >= 500  # too many requests, or the Hub's own trouble: it passes
        return CheckpointError(
            f"the Hugging Face Hub {'refused' if status < 500 else 'failed on'} the request for {repo_id}: "
            f"{status} {reason}{said}" + ("; wait a minute and try again" if later else ""),
            zh=f"Hugging Face Hub {'拒绝了' if status < 500 else '未能处理'}对 {repo_id} 的请求："
            f"{status} {reason}{said}" + ("；请稍等一分钟再试" if later else ""),
        )
    if isinstance(e, httpx2.TimeoutException):
        return CheckpointError(
            f"the Hugging Face Hub did not answer within {HUB_TIMEOUT_S:g} s for {repo_id}; try again later",
            zh=f"Hugging Face Hub 在 {HUB_TIMEOUT_S:g} 秒内没有回应 {repo_id} 的请求；请稍后再试",
        )
    return CheckpointError(
        f"could not reach the Hugging Face Hub for {repo_id} ({type(e).__name__}); check the network and try again",
        zh=f"无法连接 Hugging Face Hub 获取 {repo_id}（{type(e).__name__}）；请检查网络后再试",
    )


def _download(repo_id: str, name: str, sha: str, token: str | bool) -> bytes:
    """One file of a repo at commit `sha`, into memory. Not hf_hub_download: that writes to disk, and retries a
    metadata request that timed out with a 60 s timeout of its own."""
    url = hf_hub_url(repo_id, name, revision=sha)
    response = get_session().get(url, headers=build_hf_headers(token=token), timeout=HUB_TIMEOUT_S)
    hf_raise_for_status(response)
    return response.content


def load_repo(
    repo_id: str, revision: str | None = None, token: str | None = None, limits: CheckpointLimits = LIMITS
) -> HubResNet:
    """A checkpoint from a Hub model repo: the id is checked (never read as a path on the server), the two files'
    sizes come from the Hub's metadata before anything is downloaded, and only those two files are fetched, at
    the commit that was measured, into memory: nothing is written."""
    repo_id = check_repo_id(repo_id)
    token = token or False  # no token: anonymous, never the server's own saved token
    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True, token=token, timeout=HUB_TIMEOUT_S)
        check_sizes({s.rfilename: s.size for s in info.siblings or []}, repo_id, limits)
        raw = [_download(repo_id, name, info.sha, token) for name in FILES]
    except (RepositoryNotFoundError, RevisionNotFoundError):  # the Hub says the same for private and gated repos
        raise CheckpointError(
            f"there is no public model repo {repo_id}{f' at {revision}' if revision else ''} on the Hugging Face Hub",
            zh=f"Hugging Face Hub 上没有公开的模型仓库 {repo_id}",
        ) from None
    except (httpx2.HTTPError, OSError) as e:  # offline, refused, timed out, rate-limited, the Hub down
        raise hub_failed(repo_id, e) from None
    return build(*raw, limits)


# --- into a session ------------------------------------------------------------------------------------------
def load_into(target: ResNet, source: ResNet) -> None:
    """Copy a loaded checkpoint's weights and shortcut states into a live model of the same architecture."""
    if target.config.to_dict() != source.config.to_dict():
        raise CheckpointError(
            f"the checkpoint is a different architecture ({source.config}) than this session's "
            f"({target.config}); reset the session with that architecture first"
        )
    with torch.no_grad():
        target.load_state_dict(source.state_dict(), strict=True)
    for i, on in enumerate(source.shortcuts, 1):
        target.set_shortcut(on, i)


def session_from(model: HubResNet, config=None, data=None):
    """A training session that continues from a loaded checkpoint, on the dataset it was trained on: a built-in or
    Hub one by its name, else `data` (the learner's own zip, which no registry knows) if its classes are the
    checkpoint's."""
    from .data import DATASETS
    from .session import Session, TrainConfig

    config = config or TrainConfig()
    if model.dataset in DATASETS:
        dataset, data = model.dataset, None
    elif data is not None and list(data.classes) == model.classes:
        dataset = data.name  # the learner's own zip, which they are training on
    elif model.dataset.startswith("zip:"):
        name = model.dataset.removeprefix("zip:")
        raise CheckpointError(
            f"this model learned from your own images ({name}.zip: {', '.join(model.classes)}): train on that zip "
            "first (Train on my zip), then load the model",
            zh=f"这个模型是用你自己的图片训练的（{name}.zip：{'、'.join(model.classes)}）：请先用那个 zip 训练"
            "（“用我的 zip 训练”），再加载模型",
        )
    else:  # a dataset this server does not know: the learner's, if the classes match (checked below)
        dataset, data = config.dataset, data if data is not None and data.name == config.dataset else None
    session = Session(replace(config, dataset=dataset), model.config, data=data)
    if list(session.data.classes) != model.classes:
        raise CheckpointError(
            f"the checkpoint's classes ({', '.join(model.classes)}) are not those of the "
            f"'{dataset}' dataset; load it where that dataset is available",
            zh=f"检查点的类别（{'、'.join(model.classes)}）与数据集 {dataset} 的不同；请在有该数据集的地方加载它",
        )
    return _continued(session, model)


def _continued(session, model: HubResNet):
    """The session with the checkpoint's weights, its history saying where they came from."""
    with session.lock:
        load_into(session.model, model)
        session.history.add_event(0, "checkpoint", "loaded from a checkpoint")
    return session
