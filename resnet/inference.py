"""Any image a user gives (an upload in an odd mode or size, a file, a Sketchpad drawing) -> the (1, C, 32, 32)
tensor the net was trained on, normalised by data.normalize: to_square is also how zips and Hub sets become
training images.
predict() adds the top classes and a picture of what each block hands on; Predictions keeps recent ones, with
those pictures as files, while the model stays as it was. Every problem with the image is an ImageError whose
message the app can show as is.
"""

import hashlib
import io
import math
import os
import re
import tempfile
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from .data import denormalize, normalize
from .errors import UserError

MAX_PIXELS = 40_000_000  # refused before decoding: a 1 kB PNG can claim to be 30000x30000 (a decompression bomb)
EMPTY = "The drawing is empty: draw a shape first."
EMPTY_ZH = "画板是空的：请先画一个图形。"
WHITE = (255, 255, 255)
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError)  # what PIL raises on bytes that are no (whole) image
# the formats read, by their bytes: PIL would also open EPS and PDF (handed to Ghostscript, where installed), PSD,
# and a few dozen more that no learner means and whose decoders are more code an untrusted file reaches
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")  # JPEG opens a phone's MPO too


class ImageError(UserError):
    """A user image we cannot use; the message is shown to the user as is."""


class EmptyDrawing(ImageError):
    """A drawing with no stroke on it (an untouched or emptied pad): the app may treat it as nothing to predict."""


def to_image(value) -> Image.Image:
    """An RGB image from a PIL image, numpy array, path, bytes, {"path": ...} or Sketchpad dict; else ImageError."""
    return _load(value)[0]


def to_square(value, size: int = 32) -> Image.Image:
    """The size x size RGB picture the net sees of anything to_image takes, before normalisation. The one way in
    for every image: zipdata.py and hub.py make the training data with it, so a file predicted is what it
    would have been trained as. Photos are padded to a square, drawings cropped to their strokes."""
    img, drawing = _load(value, draft=4 * size)
    img = _frame_drawing(img, size) if drawing else _pad_square(img, size)
    if img.size != (size, size):
        # antialiased: nearest would alias a photo into noise. PIL, not torchvision.transforms.v2: v2's resize and
        # pad of a PIL image call these same PIL functions (same speed, measured), and on tensors v2 has no LANCZOS
        img = img.resize((size, size), Image.LANCZOS)
    return img


def to_tensor(value, size: int = 32, channels: int = 3) -> torch.Tensor:
    """(1, channels, size, size) float32: to_square's picture, normalised exactly like the training images."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    img = to_square(value, size)
    if channels == 1:
        img = img.convert("L")  # for grayscale-trained models
    x = torch.from_numpy(np.array(img)).reshape(size, size, channels).permute(2, 0, 1)  # (C, size, size) uint8
    return normalize(x[None])


def predict(model, value, classes, k: int = 3, device=None, features: bool = True, precision: str = "fp32") -> dict:
    """{"top": [(class, prob)] * k, "probs": {class: prob}, "features": {"stem": uint8 grid, "block1": ...}}.
    `value` is anything `to_tensor` takes, or its result. features=False: no "features" (the grids cost more than
    the forward pass). precision "bf16": the forward under bf16 autocast, as the session trains (on a CPU with AMX,
    1.8 ms for the notebook's net against 12 ms in fp32)."""
    device = torch.device(device) if device else next(model.parameters()).device
    x = value if torch.is_tensor(value) else to_tensor(value, channels=model.config.in_channels)  # (1, C, 32, 32)
    x = x.to(device)
    was_training = model.training
    model.eval()  # BatchNorm must use its running statistics: a batch of one image has none of its own
    try:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            feats = model.features(x)  # one pass: the last block's output also gives the logits
            probs = model.head(feats[f"block{len(model.blocks)}"]).float().softmax(-1)[0].cpu()  # (num_classes,)
    finally:
        model.train(was_training)
    if len(classes) != len(probs):
        raise ValueError(f"{len(classes)} class names for a model with {len(probs)} outputs")
    top = probs.topk(min(k, len(probs)))
    result = {
        "top": [(classes[i], p) for p, i in zip(top.values.tolist(), top.indices.tolist())],
        "probs": dict(zip(classes, probs.tolist())),
    }
    if features:
        result["features"] = {name: feature_grid(f[0]) for name, f in feats.items()}
    return result


def feature_grid(fmap: torch.Tensor, n: int = 16, tile: int = 48) -> np.ndarray:
    """(C, H, W) activations -> one uint8 grayscale image: the n channels with the largest mean activation, each
    scaled to its own min..max (a weak channel still shows its pattern), upscaled to >= tile px, 1 px white gaps."""
    f = fmap.detach().float().cpu()
    f = f[0] if f.dim() == 4 else f
    f = f[f.mean((1, 2)).argsort(descending=True, stable=True)[:n]]  # (m, H, W), most active first
    lo, hi = f.amin((1, 2), keepdim=True), f.amax((1, 2), keepdim=True)
    f = ((f - lo) / (hi - lo).clamp_min(1e-12) * 255).round().to(torch.uint8).numpy()
    m, h, w = f.shape
    s = max(1, math.ceil(tile / min(h, w)))  # nearest upscale: an 8x8 map becomes visible 6x6-pixel squares
    f = f.repeat(s, axis=1).repeat(s, axis=2)  # (m, h*s, w*s)
    # tiled by hand: torchvision.utils.make_grid gives the same picture 2x slower (3 channels, an op per tile)
    cols = math.ceil(math.sqrt(m))
    rows = math.ceil(m / cols)
    th, tw = h * s + 1, w * s + 1  # a tile plus its gap
    grid = np.full((rows * th - 1, cols * tw - 1), 255, np.uint8)
    for i, t in enumerate(f):
        r, c = divmod(i, cols)
        grid[r * th : r * th + h * s, c * tw : c * tw + w * s] = t
    return grid


class Predictions:
    """The latest `size` predictions, each with its feature grids as PNG files, by (the session's model version, the
    image). A room predicting the same example images with the same model (every visitor, on the shipped one) gets
    them without the forward pass, the grids or the encoding: on 2 vCPUs (AMX) those cost ~15-40 ms, much of it the
    grids and their PNGs, against ~1 ms for a gallery of files. A step, a reset or a shortcut switch changes the
    version, so a prediction is never older than the model it shows."""

    def __init__(self, size: int = 256, folder: Path | None = None):
        self.size = size  # predictions kept; the oldest one's files are deleted when a new one comes
        self.folder = folder
        self._kept: OrderedDict[tuple, dict] = OrderedDict()
        self._lock = threading.Lock()

    def predict(self, session, x: torch.Tensor, k: int = 5) -> dict:
        """{"top": [(class, prob)] * k, "features": [(png path, block name)], "picture": png path} of `session`'s
        model as it is now; the picture is x as the net sees it, 32x32. Files of our own, never rewritten (the app
        serves them as they are): two learners' identical arrays saved by gradio at the same moment would be
        written over one another while being read."""
        digest = hashlib.blake2b(x.detach().cpu().float().numpy().tobytes(), digest_size=16).hexdigest()
        with session.lock:  # the version and the prediction belong together: no step comes between them
            key = (session.version, digest, k)
            with self._lock:
                if key in self._kept:
                    self._kept.move_to_end(key)
                    return self._kept[key]
            result = predict(session.model, x, session.data.classes, k=k, precision=session.precision)
        files = [(self._png(grid), name) for name, grid in result["features"].items()]
        pixels = denormalize(x[0].cpu()).expand(3, -1, -1).permute(1, 2, 0).numpy()  # (32, 32, 3), grey as RGB
        kept = {"top": result["top"], "features": files, "picture": self._png(pixels)}
        with self._lock:
            if key in self._kept:  # another thread made the same one meanwhile: keep one set of files
                for path in self._files(kept):
                    Path(path).unlink(missing_ok=True)
                return self._kept[key]
            self._kept[key] = kept
            while len(self._kept) > self.size:
                for path in self._files(self._kept.popitem(last=False)[1]):
                    Path(path).unlink(missing_ok=True)  # 256 predictions ago: its page fetched it long since
        return kept

    @staticmethod
    def _files(kept: dict) -> list[str]:
        return [path for path, _ in kept["features"]] + [kept["picture"]]

    def _png(self, grid: np.ndarray) -> str:
        with self._lock:
            if self.folder is None:
                self.folder = Path(tempfile.mkdtemp(prefix="playground-features-"))
        path = self.folder / f"{uuid.uuid4().hex}.png"
        Image.fromarray(grid).save(path, compress_level=1)  # fast: ~3 ms a grid, for files of ~20-70 kB
        return str(path)


# --- reading whatever arrives --------------------------------------------------------------------------------------
def _load(value, draft=None) -> tuple[Image.Image, bool]:
    """(RGB image, is it a drawing). draft: a size hint that lets a JPEG decode at 1/2..1/8 scale."""
    if isinstance(value, dict) and any(key in value for key in ("background", "layers", "composite")):
        return _drawing(value), True
    return _flatten(_open(value, draft)), False


def _open(value, draft=None) -> Image.Image:
    """Anything but a Sketchpad dict -> a new, loaded RGB or RGBA image (alpha kept so layers can be stacked)."""
    if isinstance(value, dict):  # Gradio's FileData: {"path": ..., "url": ..., ...}; URLs are never fetched
        if not value.get("path"):
            raise ImageError("Only local image files can be read; this value has no local path.")
        value = value["path"]
    if value is None:
        raise ImageError(
            "No image: upload a picture or draw something first.", zh="没有图片：请先上传一张图片或画点什么。"
        )
    if isinstance(value, np.ndarray):
        return _from_array(value)
    if isinstance(value, Image.Image):
        _check_size(*value.size)
        return _decode(value)
    if isinstance(value, str) and re.match(r"(https?|ftp|data):", value, re.IGNORECASE):
        raise ImageError(
            "Web addresses are not fetched: upload the image file instead.", zh="不会去获取网址：请上传图片文件。"
        )
    if isinstance(value, (str, os.PathLike)) and not os.path.isfile(value):
        raise ImageError(
            f"There is no image file at {os.fspath(value)!r}.", zh=f"{os.fspath(value)!r} 处没有图片文件。"
        )
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = io.BytesIO(value)
    elif not isinstance(value, (str, os.PathLike)) and not hasattr(value, "read"):
        raise ImageError(f"Cannot read an image from a {type(value).__name__}.")
    with header(value) as img:
        if draft and img.format in ("JPEG", "MPO"):  # MPO: a phone's JPEG with a second picture in it
            img.draft(None, (draft, draft))  # the decoder scales by 1/2..1/8: a 6000x6000 photo loads in ms
        return _decode(img)


def header(value) -> Image.Image:
    """The image file `value` (a path, bytes or a file object) opened lazily, its header read and its size checked:
    nothing decoded yet, so a 1 kB file that claims 30000x30000 pixels costs nothing to refuse. For files a library
    decodes before our code sees them (gradio's Sketchpad decodes every layer it is sent), and a zip's members."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = io.BytesIO(value)
    try:
        img = Image.open(value, formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        pixels = re.search(r"\((\d+) pixels\)", str(e))  # PIL refuses > 2 * MAX_IMAGE_PIXELS on its own
        size, size_zh = (f"{int(pixels[1]):,} pixels", f"{int(pixels[1]):,} 像素") if pixels else ("too many", "过多")
        raise ImageError(
            f"The image is too large ({size}); the limit is {MAX_PIXELS:,} pixels.",
            zh=f"图片太大（{size_zh}）；上限是 {MAX_PIXELS:,} 像素。",
        ) from None
    except UNREADABLE as e:  # UnidentifiedImageError is an OSError
        raise unreadable(e) from None
    try:
        _check_size(*img.size)
    except ImageError:
        img.close()
        raise
    return img


def _decode(img: Image.Image) -> Image.Image:
    """Decode pixels (frame 0 of an animation), apply EXIF rotation, and bring any mode to RGB or RGBA."""
    try:
        img = ImageOps.exif_transpose(img)  # phones save portraits sideways plus a "rotate me" flag; returns a copy
        if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
            return _from_array(np.array(img))  # convert("L") would clip 16-bit and float values at 255
        img = img.convert("LA") if img.mode == "La" else img  # PIL converts premultiplied La only to LA
        alpha = "A" in img.mode or "a" in img.mode or "transparency" in img.info  # LA, PA, RGBa, P with tRNS ...
        return img.convert("RGBA" if alpha else "RGB")  # 1, L, P, CMYK, YCbCr, ...
    except ImageError:
        raise
    except UNREADABLE as e:  # a truncated or corrupt file fails here, when the pixels are decoded
        raise unreadable(e) from None


def unreadable(e: Exception) -> ImageError:
    """PIL's reason, with a file's name but not the server's folders it sits in (gradio's upload cache); in Chinese
    the file's name alone (PIL's reason is English)."""
    why = re.sub(r"(?:[A-Za-z]:)?[/\\](?:[^/\\'\"]*[/\\])+", "", str(e))
    why = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", why)  # a file read from memory (a zip's) has no name
    name = re.search(r"'([^']+)'", why)
    zh = f"这个文件不是能读取的图片（{name[1]}）。" if name else "这个文件不是能读取的图片。"
    return ImageError(f"That file is not an image we can read ({why}).", zh=zh)


def _from_array(a: np.ndarray) -> Image.Image:
    """HxW / HxWx1..4 (or CxHxW) of bool, uint8, uint16, ints or floats in [0, 1] or [0, 255] -> RGB or RGBA."""
    if a.ndim == 3 and a.shape[0] in (1, 2, 3, 4) and a.shape[-1] > 4:
        a = a.transpose(1, 2, 0)  # (C, H, W), as torch keeps images
    if a.ndim == 3 and a.shape[-1] in (1, 2):
        a = a[..., 0] if a.shape[-1] == 1 else a[..., [0, 0, 0, 1]]  # gray (+ alpha) -> HxW or RGBA
    if a.size == 0 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageError(
            f"An image array must be HxW, HxWx3 or HxWx4 and not empty; this one is {a.shape}.",
            zh=f"图像数组必须是 HxW、HxWx3 或 HxWx4 且不能为空；这个是 {a.shape}。",
        )
    _check_size(a.shape[1], a.shape[0])
    if a.dtype == bool:
        a = a * 255.0
    elif a.dtype == np.uint16:
        a = a / 257.0  # 65535 -> 255: 16-bit PNG/TIFF are scaled, not clipped
    elif np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float64))
        a = a * 255 if a.max() <= 1 else a  # floats in [0, 1], else assumed [0, 255]
    elif a.dtype != np.uint8 and a.max() > 255:  # wider ints: 16-bit range, or whatever range they use
        a = a / (257.0 if a.max() <= 65535 else a.max() / 255)
    a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(a).convert("RGBA" if a.ndim == 3 and a.shape[-1] == 4 else "RGB")


def _flatten(img: Image.Image) -> Image.Image:
    """RGBA -> RGB on white: transparent pixels are black underneath, so a drawing would become a black square."""
    if img.mode == "RGBA":
        img = Image.alpha_composite(Image.new("RGBA", img.size, WHITE + (255,)), img)
    return img.convert("RGB")


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"The image is too large ({width}x{height} pixels); the limit is {MAX_PIXELS:,} pixels.",
            zh=f"图片太大（{width}x{height} 像素）；上限是 {MAX_PIXELS:,} 像素。",
        )
    if width * height == 0:
        raise ImageError(f"The image is empty ({width}x{height} pixels).", zh=f"图片是空的（{width}x{height} 像素）。")


# --- squaring: photos are padded, drawings are cropped to their strokes ----------------------------------------
def _border_colour(a: np.ndarray) -> np.ndarray:
    """(3,) median of the edge pixels of an (H, W, 3) array: the background to pad with."""
    return np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]), axis=0).round()


def _strokes(a: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels clearly unlike the background colour."""
    return np.abs(a.astype(np.int16) - bg).max(-1) > 40


def _pad_square(img: Image.Image, size: int) -> Image.Image:
    """Shrink (cheaply) to <= 8*size, then pad to a square of side >= size in the border colour: the aspect ratio
    is kept, and an image no larger than size (MNIST's 28x28) sits centred at its own scale instead of blurred up."""
    img.thumbnail((8 * size, 8 * size), Image.LANCZOS)  # first: padding a 6000x4000 photo to 6000^2 is slow
    side = max(size, *img.size)
    if img.size == (side, side):
        return img
    square = Image.new("RGB", (side, side), tuple(int(c) for c in _border_colour(np.asarray(img))))
    square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return square


def _drawing(value: dict) -> Image.Image:
    """A Sketchpad/ImageEditor value -> the drawing on white; stacks background + layers when composite is None."""
    if value.get("composite") is not None:
        img = _open(value["composite"])
    else:
        layers = value.get("layers") or []
        layers = list(layers) if isinstance(layers, (list, tuple)) else [layers]
        parts = [_open(v) for v in [value.get("background"), *layers] if v is not None]
        if not parts:
            raise EmptyDrawing(EMPTY, zh=EMPTY_ZH)
        img = Image.new("RGBA", parts[0].size, WHITE + (0,))
        for part in parts:  # in order: background first, then each layer on top
            layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
            layer.paste(part.convert("RGBA"), (0, 0))  # a layer of another size is cropped/extended to the canvas
            img = Image.alpha_composite(img, layer)
    img = _flatten(img)
    if not _strokes(np.asarray(img), _border_colour(np.asarray(img))).any():  # all transparent or one colour
        raise EmptyDrawing(EMPTY, zh=EMPTY_ZH)
    return img


def _frame_drawing(img: Image.Image, size: int) -> Image.Image:
    """Crop to the strokes + 15% margin (training shapes fill 40-90% of the frame, a sketch may sit in a corner
    of a big canvas), then thicken the strokes: a 3 px pen line on an 800 px canvas is 0.1 px at 32x32 and
    would vanish in the downscale. Returns a square of side >= 4*size, or the crop itself when smaller."""
    a = np.asarray(img)
    bg = _border_colour(a)
    ys, xs = np.nonzero(_strokes(a, bg))
    side = max(2, math.ceil(1.3 * max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)))
    top, left = (ys.min() + ys.max() + 1 - side) // 2, (xs.min() + xs.max() + 1 - side) // 2
    square = Image.new("RGB", (side, side), tuple(int(c) for c in bg))
    square.paste(img, (-int(left), -int(top)))  # may reach past the canvas: padded with the background colour
    luma = np.array([0.299, 0.587, 0.114])
    dark = a[ys, xs].mean(0) @ luma < bg @ luma  # dark ink on a light page (the usual), or the reverse
    s = np.asarray(square)
    f = side // (4 * size)
    if f > 1:  # shrink by keeping the inkiest pixel of each f x f block: no stroke gets lost
        n = side // f
        s = s[: n * f, : n * f].reshape(n, f, n, f, 3)
        s = s.min((1, 3)) if dark else s.max((1, 3))
    m = _strokes(s, bg)
    p = np.pad(m, 1)
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    width = 2 * m.sum() / max(1, (m & ~inner).sum())  # stroke width ~ area / (outline / 2)
    grow = 2 * len(s) / size - width  # px to add so a stroke ends ~2 px wide at size x size
    out = Image.fromarray(np.ascontiguousarray(s))
    for _ in range(max(0, round(grow / 2))):  # each 3x3 pass widens a stroke by 2 px
        out = out.filter(ImageFilter.MinFilter(3) if dark else ImageFilter.MaxFilter(3))
    return out
