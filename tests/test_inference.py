import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from resnet import inference
from resnet.data import normalize
from resnet.errors import UserError
from resnet.inference import ImageError, Predictions, feature_grid, predict, to_image, to_tensor
from resnet.model import ResNet
from resnet.session import Session, TrainConfig

CLASSES = [f"class{i}" for i in range(10)]


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def level(v: int) -> float:
    """The normalised value of uint8 level v, computed by data.normalize itself (no copied constants)."""
    return normalize(torch.full((1, 1, 1, 1), v, dtype=torch.uint8)).item()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Undo normalize for checks: (1, C, H, W) float -> (H, W) uint8 of the mean over channels, by interpolation."""
    lo, hi = level(0), level(255)
    return ((x[0].mean(0) - lo) / (hi - lo) * 255).round().clamp(0, 255).byte().numpy()


def gif_bytes() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def palette_with_transparency() -> Image.Image:
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (4, 4, 12, 12))
    img.info["transparency"] = 0
    return img


def drawing_layer(size=400, box=(20, 20, 90, 90), width=3) -> np.ndarray:
    """A transparent RGBA layer with a black ellipse outline, like a Sketchpad stroke layer."""
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(layer).ellipse(box, outline=(0, 0, 0, 255), width=width)
    return np.array(layer)


def white(size=400) -> np.ndarray:
    return np.full((size, size, 4), 255, np.uint8)


def composite(layer: np.ndarray) -> np.ndarray:
    return np.array(Image.alpha_composite(Image.fromarray(white(len(layer))), Image.fromarray(layer)))


RGB = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
INPUTS = {
    **{f"pil-{m}": Image.fromarray(RGB).convert(m) for m in ("RGB", "RGBA", "LA", "L", "1", "P", "CMYK", "YCbCr")},
    **{f"pil-{m}": Image.fromarray(RGB).convert("RGBA").convert(m) for m in ("PA", "La", "RGBa")},
    "pil-P-transparency": palette_with_transparency(),
    "pil-I;16": Image.fromarray(np.full((9, 7), 40000, np.uint16)),
    "pil-I": Image.new("I", (9, 7), 40000),
    "pil-F": Image.new("F", (9, 7), 0.25),
    "np-HxW": RGB[..., 0],
    "np-HxWx1": RGB[..., :1],
    "np-HxWx3": RGB,
    "np-HxWx2": RGB[..., :2],
    "np-HxWx4": np.dstack([RGB, RGB[..., 0]]),
    "np-CxHxW": RGB.transpose(2, 0, 1),
    "np-uint16": RGB.astype(np.uint16) * 257,
    "np-float01": RGB / 255.0,
    "np-float255": RGB.astype(np.float32),
    "np-bool": RGB[..., 0] > 128,
    "np-int64": RGB.astype(np.int64),
    "np-1x1": np.zeros((1, 1, 3), np.uint8),
    "bytes-png": encode(Image.fromarray(RGB)),
    "bytes-jpeg": encode(Image.fromarray(RGB), "JPEG"),
    "bytes-gif-animated": gif_bytes(),
    "bytes-tiff-16bit": encode(Image.fromarray(np.full((8, 8), 30000, np.uint16)), "TIFF"),
    "bytearray-png": bytearray(encode(Image.fromarray(RGB))),
    "sketch-composite": {"background": white(), "layers": [drawing_layer()], "composite": composite(drawing_layer())},
    "sketch-no-composite": {"background": white(), "layers": [drawing_layer()], "composite": None},
    "sketch-layers-only": {"background": None, "layers": [drawing_layer()], "composite": None},
    "sketch-pil": {"background": None, "layers": [], "composite": Image.fromarray(drawing_layer())},
}


@pytest.mark.parametrize("value", INPUTS.values(), ids=INPUTS.keys())
def test_every_input_kind_gives_a_normalised_tensor(value):
    x = to_tensor(value)
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.float32
    assert level(0) - 1e-5 <= x.min() and x.max() <= level(255) + 1e-5
    assert to_image(value).mode == "RGB"


def test_channels_1_gives_grayscale():
    x = to_tensor(RGB, channels=1, size=16)
    assert x.shape == (1, 1, 16, 16)
    gray = to_tensor(np.full((8, 8, 3), 200, np.uint8), channels=1)
    torch.testing.assert_close(gray, torch.full((1, 1, 32, 32), level(200)))


def test_paths_and_file_dicts(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(INPUTS["bytes-png"])
    layer = tmp_path / "layer.png"
    Image.fromarray(drawing_layer()).save(layer)
    expected = to_tensor(RGB)
    for value in (str(path), path, {"path": str(path), "url": "http://x/a.png"}):
        torch.testing.assert_close(to_tensor(value), expected)
    sketch = {"background": str(tmp_path / "bg.png"), "layers": [{"path": str(layer)}], "composite": None}
    Image.fromarray(white()).save(sketch["background"])
    assert to_tensor(sketch).shape == (1, 3, 32, 32)


def test_transparency_becomes_white_not_black():
    rgba = np.zeros((40, 40, 4), np.uint8)  # fully transparent black, as a canvas stores an empty area
    rgba[15:25, 15:25] = (0, 0, 0, 255)
    for value in (rgba, Image.fromarray(rgba), encode(Image.fromarray(rgba)), palette_with_transparency()):
        assert to_tensor(value)[0, :, 0, 0].tolist() == pytest.approx([level(255)] * 3)
    x = to_tensor({"background": None, "layers": [rgba], "composite": rgba})
    assert x[0, :, 0, 0].tolist() == pytest.approx([level(255)] * 3)
    assert x.min() < level(60)  # the drawn square is there, dark


@pytest.mark.parametrize(
    "value",
    [
        np.full((8, 8), 32768, np.uint16),
        Image.fromarray(np.full((8, 8), 32768, np.uint16)),
        encode(Image.fromarray(np.full((8, 8), 32768, np.uint16)), "PNG"),
        encode(Image.fromarray(np.full((8, 8), 32768, np.uint16)), "TIFF"),
        np.full((8, 8), 0.5, np.float32),
    ],
    ids=["np-uint16", "pil-I;16", "png-16bit", "tiff-16bit", "float-0.5"],
)
def test_mid_grey_maps_to_128_not_255(value):
    assert to_image(value).getpixel((0, 0)) == (128, 128, 128)


def test_animated_gif_uses_the_first_frame():
    assert to_image(gif_bytes()).getpixel((8, 8)) == (255, 0, 0)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), "white")
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    assert to_image(encode(img, "JPEG", exif=exif)).size == (20, 40)


def test_aspect_ratio_kept_by_padding_with_the_border_colour():
    wide = np.full((20, 80, 3), 255, np.uint8)
    wide[5:15, 30:50] = 0
    img = to_uint8(to_tensor(wide))
    assert img[:8].min() >= 250 and img[-8:].min() >= 250  # the padding above and below is white
    assert img[14:18, 14:18].max() < 30  # the black square stays a square in the middle


def png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header is patched to claim width x height (a decompression bomb's header)."""
    data = bytearray(encode(Image.new("L", (8, 8))))
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


@pytest.mark.parametrize("size", [(7000, 7000), (30000, 30000)], ids=["over-MAX_PIXELS", "over-PIL-limit"])
def test_huge_images_are_refused_before_decoding(size):
    with pytest.raises(ImageError, match="too large") as refused:
        to_tensor(png_claiming(*size))
    assert "pixels" not in refused.value.text("zh") and "像素" in refused.value.text("zh")  # one language at a time


def test_huge_arrays_are_refused(monkeypatch):
    monkeypatch.setattr(inference, "MAX_PIXELS", 100)
    with pytest.raises(ImageError, match="20x20"):
        to_tensor(np.zeros((20, 20), np.uint8))


@pytest.mark.parametrize(
    "value",
    [
        encode(Image.fromarray(RGB))[:60],
        b"this is not an image at all",
        b"",
        None,
        np.zeros((0, 5, 3), np.uint8),
        np.zeros((6, 6, 5), np.uint8),
        "https://example.com/cat.png",
        "/nonexistent/cat.png",
        {"path": None, "url": "https://example.com/cat.png"},
        42,
    ],
    ids=["truncated-png", "junk", "empty-bytes", "none", "0-size", "5-channels", "url", "missing", "url-dict", "int"],
)
def test_unusable_values_raise_image_error(value):
    with pytest.raises(UserError):  # an ImageError is one: the app shows its message to the learner
        to_tensor(value)


def test_junk_file_named_png_gives_a_clear_message(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG but not really" * 10)
    with pytest.raises(ImageError, match="not an image we can read") as e:
        to_image(path)
    assert "photo.png" in str(e.value) and str(tmp_path) not in str(e.value)  # the server's folders stay private
    assert e.value.text("zh") == "这个文件不是能读取的图片（photo.png）。"  # no English from PIL in Chinese
    with pytest.raises(ImageError) as e:  # a file read from memory (a zip's): no object's address in the message
        to_image(path.read_bytes())
    assert str(e.value) == "That file is not an image we can read (cannot identify image file)."


@pytest.mark.parametrize("kind", ["EPS", "PSD"])
def test_a_format_no_learner_means_is_never_handed_to_its_decoder(tmp_path, monkeypatch, kind):
    """PIL opens dozens of formats; EPS goes to Ghostscript where it is installed. Only the common image formats
    are read: any other is refused as unreadable before its plugin sees the file."""
    path = tmp_path / "picture.png"
    Image.new("RGB", (40, 40), "white").save(path, "EPS" if kind == "EPS" else "PNG")
    if kind == "PSD":  # PIL writes no PSD: a header that its PSD plugin accepts (1 channel, 8-bit, 40x40)
        path.write_bytes(b"8BPS" + struct.pack(">H6xHIIHH", 1, 1, 40, 40, 8, 1) + b"\0" * 64)
    with Image.open(path) as img:
        assert img.format == kind  # PIL itself would read it
    plugin = Image.OPEN[kind][0]  # the format's image class: its _open parses the file's header
    seen = []

    def parse(self):  # a header read by the plugin: what the app must never let an untrusted file reach
        seen.append(kind)
        raise SyntaxError(kind)

    monkeypatch.setattr(plugin, "_open", parse)
    with pytest.raises(ImageError, match="not an image we can read"):
        to_image(path)
    assert seen == [], f"the {kind} plugin read the file"


@pytest.mark.parametrize(
    "value",
    [
        {"background": white(), "layers": [np.zeros((400, 400, 4), np.uint8)], "composite": white()},
        {"background": None, "layers": [np.zeros((400, 400, 4), np.uint8)], "composite": None},
        {"background": white(), "layers": [], "composite": None},
        {"background": None, "layers": [], "composite": np.zeros((400, 400, 4), np.uint8)},
        {"background": None, "layers": [], "composite": None},
    ],
    ids=["white-composite", "transparent-layers", "background-only", "transparent-composite", "nothing"],
)
def test_empty_drawing_says_so(value):
    with pytest.raises(ImageError, match="empty"):
        to_tensor(value)


def test_small_drawing_in_a_corner_fills_the_frame():
    layer = drawing_layer(size=800, box=(20, 20, 120, 120), width=3)  # a 100 px circle in an 800 px canvas
    img = to_uint8(to_tensor({"background": white(800), "layers": [layer], "composite": composite(layer)}))
    ys, xs = np.nonzero(img < 128)
    assert np.ptp(ys) >= 20 and np.ptp(xs) >= 20  # the circle spans most of the 32x32 frame
    assert abs(ys.mean() - 15.5) < 3 and abs(xs.mean() - 15.5) < 3  # centred
    assert img.min() < 60  # the strokes stay dark: thickened before the 25x downscale


def test_thin_strokes_on_a_big_canvas_survive_the_downscale():
    layer = drawing_layer(size=1000, box=(50, 50, 950, 950), width=2)  # a 2 px pen line, 30x too thin for 32 px
    img = to_uint8(to_tensor({"background": None, "layers": [layer], "composite": None}))
    for line in (img[:, 15], img[:, 16], img[15], img[16]):  # each crosses the circle's outline twice
        assert line[:8].min() < 60 and line[-8:].min() < 60
    assert img[14:18, 14:18].min() >= 250  # the inside stays empty: thickening did not fill the shape


def test_an_image_no_larger_than_the_input_is_centred_at_its_own_scale_not_blurred_up():
    # as the Hub's MNIST digits are trained: a 28x28 digit predicted must be those same 784 pixels, 2 px of border
    digit = np.random.default_rng(2).integers(0, 256, (28, 28), dtype=np.uint8)
    digit[[0, -1]] = digit[:, [0, -1]] = 7  # its border colour, which the padding continues
    x = to_tensor(encode(Image.fromarray(digit)))
    expected = torch.full((32, 32), 7, dtype=torch.uint8)
    expected[2:30, 2:30] = torch.from_numpy(digit)
    torch.testing.assert_close(x, normalize(expected.expand(1, 3, 32, 32)), rtol=0, atol=0)


def test_photos_are_not_cropped():
    photo = np.full((100, 100, 3), 255, np.uint8)
    photo[5:15, 5:15] = 0  # a small dark square in a corner stays small and in the corner
    img = to_uint8(to_tensor(photo))
    assert img[2:4, 2:4].max() < 60 and img[8:, 8:].min() >= 250


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ResNet()


def test_predict_returns_sorted_top_k_all_probs_and_features(model):
    out = predict(model, RGB, CLASSES, k=3)
    probs = [p for _, p in out["top"]]
    assert len(out["top"]) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert list(out["probs"]) == CLASSES and sum(out["probs"].values()) == pytest.approx(1, abs=1e-5)
    assert [out["probs"][c] for c, _ in out["top"]] == probs
    n_blocks = len(model.blocks)
    assert list(out["features"]) == ["stem"] + [f"block{i}" for i in range(1, n_blocks + 1)]
    for grid in out["features"].values():
        assert isinstance(grid, np.ndarray) and grid.dtype == np.uint8 and grid.ndim in (2, 3)


def test_predict_matches_the_model_in_eval_mode(model):
    model.eval()
    with torch.no_grad():
        expected = model(to_tensor(RGB)).softmax(-1)[0]
    out = predict(model, RGB, CLASSES, k=10)
    assert [out["probs"][c] for c in CLASSES] == pytest.approx(expected.tolist(), abs=1e-6)


def test_predict_in_bf16_agrees_with_fp32_and_can_skip_the_feature_grids(model):
    # the session's precision for a prediction that follows training; the grids only where they are shown
    full = predict(model, RGB, CLASSES, k=10)
    fast = predict(model, RGB, CLASSES, k=10, features=False, precision="bf16")
    assert "features" not in fast
    assert [fast["probs"][c] for c in CLASSES] == pytest.approx([full["probs"][c] for c in CLASSES], abs=0.02)


@pytest.mark.parametrize("training", [True, False])
def test_predict_restores_the_models_mode(model, training):
    model.train(training)
    predict(model, RGB, CLASSES)
    assert model.training is training and all(m.training is training for m in model.modules())


def test_feature_grid_picks_the_most_active_channels():
    fmap = torch.zeros(64, 8, 8)
    fmap[5] = torch.arange(64.0).reshape(8, 8) + 100  # the most active channel, a left-to-right ramp
    grid = feature_grid(fmap, n=16)
    s = 6  # ceil(48 / 8)
    assert grid.dtype == np.uint8 and grid.shape == (4 * (8 * s + 1) - 1,) * 2
    assert grid[0, 0] == 0 and grid[8 * s - 1, 8 * s - 1] == 255  # channel 5 first, min-max scaled
    assert (grid[:, 8 * s] == 255).all()  # the 1 px gap after the first column of tiles
    assert feature_grid(torch.randn(3, 32, 32)).shape == (2 * 65 - 1, 2 * 65 - 1)  # 3 tiles: 2 columns, 2 rows


def test_big_jpeg_is_fast():
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (3000, 4000, 3), dtype=np.uint8))
    x = to_tensor(encode(photo, "JPEG", quality=50))
    assert x.shape == (1, 3, 32, 32)


def test_predictions_are_kept_until_the_model_changes(tmp_path):
    session = Session(TrainConfig(batch_size=8, eval_every=0, precision="fp32"))
    forwards = []
    session.model.stem.register_forward_hook(lambda *_: forwards.append(1))
    kept = Predictions(size=2, folder=tmp_path)
    x = to_tensor(RGB)
    first = kept.predict(session, x)
    assert [name for _, name in first["features"]] == ["stem", "block1", "block2", "block3"]
    assert all(Image.open(path).size[0] >= 48 for path, _ in first["features"])  # real pictures, on disk
    assert kept.predict(session, x) is first and len(forwards) == 1  # the same image, the same model: no forward
    session.set_shortcut(False, 2)  # the model computes something else now
    assert kept.predict(session, x) is not first and len(forwards) == 2
    session.step(1)  # and after a step
    before = len(forwards)
    third = kept.predict(session, x)
    assert len(forwards) == before + 1 and third is not first
    # two kept: the oldest's files are gone, the others' are there
    assert not any(Path(p).exists() for p, _ in first["features"])
    assert all(Path(p).exists() for p, _ in third["features"])
    assert len(list(tmp_path.iterdir())) == 10  # two predictions: four grids and the picture each
    assert np.array(Image.open(third["picture"])).shape == (32, 32, 3)
