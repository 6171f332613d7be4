"""The app holds up in a workshop: every bad input gets a message and the session goes on, divergence is undone,
no file outside assets/ can be fetched, a full room says so, and many learners at once see only their own work."""

import io
import json
import math
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
from tests import load_test

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "assets" / "examples").glob("*.png"))


def image_bytes(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def bomb_png(width=30000, height=30000) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb)."""
    data = bytearray(image_bytes(Image.new("L", (8, 8))))
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def gif_animated() -> bytes:
    frames = [Image.new("RGB", (40, 40), c) for c in ("red", "blue")]
    return image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])


def status_step(outputs) -> int:
    return int(outputs[4].split("**Step ")[1].split("**")[0])


# (file content, None if the app predicts it, else a word of the message the learner gets)
UPLOADS = {
    "text renamed .png": (b"hello, I am a text file", "not an image"),
    "truncated png": (image_bytes(Image.new("RGB", (64, 64), "red"))[:60], "not an image"),
    "decompression bomb": (bomb_png(), "too large"),
    "1x1 image": (image_bytes(Image.new("RGB", (1, 1), "white")), None),
    "16-bit png": (image_bytes(Image.fromarray(np.full((40, 40), 30000, np.uint16))), None),
    "cmyk jpeg": (image_bytes(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG"), None),
    "animated gif": (gif_animated(), None),
}


@pytest.mark.parametrize("name", list(UPLOADS))
def test_every_kind_of_upload_gets_a_prediction_or_a_clear_message(client, tmp_path, name):
    content, message = UPLOADS[name]
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    if message is None:
        label, _, _ = client.predict(handle_file(str(path)), api_name="/predict_image")
        assert len(label["confidences"]) == 5
    else:
        with pytest.raises(AppError, match=message):
            client.predict(handle_file(str(path)), api_name="/predict_image")
    assert status_step(client.predict(api_name="/step")) == 1  # and the session goes on


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"background": None, "layers": [], "composite": None}, None),  # the pad as the page opens: no message
        ({"background": "white", "layers": [], "composite": None}, None),  # nothing drawn yet: no message either
        ({"background": "white", "layers": ["drawn"], "composite": None}, None),
    ],
)
def test_sketchpad_payloads_with_and_without_a_composite(client, tmp_path, payload, message):
    white = tmp_path / "white.png"
    Image.new("RGB", (280, 280), "white").save(white)
    stroke = np.zeros((280, 280, 4), np.uint8)
    stroke[100:180, 130:140] = (0, 0, 0, 255)
    drawn = tmp_path / "layer.png"
    Image.fromarray(stroke).save(drawn)
    files = {"white": handle_file(str(white)), "drawn": handle_file(str(drawn))}
    value = {
        "background": files.get(payload["background"]),
        "layers": [files[k] for k in payload["layers"]],
        "composite": None,
        "id": None,
    }
    if message:
        with pytest.raises(AppError, match=message):
            client.predict(value, api_name="/predict_sketch")
    else:
        label, _, _ = client.predict(value, api_name="/predict_sketch")
        assert bool(label) == bool(payload["layers"])  # an untouched pad: an empty label, no error


def test_divergent_learning_rate_every_bad_step_rejected_and_no_nan_in_any_chart(client):
    client.predict(api_name="/step")
    client.predict("adam", 1000, 64, api_name="/configure")
    out = client.predict(20, api_name="/step_n")
    assert status_step(out) == 1  # all 20 rejected: still the one good step
    assert "rejected" in out[4] and "weights restored" in out[4]
    text = json.dumps(out[:4])
    assert "NaN" not in text and "Infinity" not in text
    client.predict("adam", 0.001, 64, api_name="/configure")
    assert status_step(client.predict(api_name="/step")) == 2


@pytest.mark.parametrize("path", ["app.py", "/etc/passwd", "../app.py", "assets/../app.py", "resnet/session.py"])
def test_no_file_outside_assets_can_be_fetched(app_url, path):
    target = path if path.startswith("/") else str(ROOT / path)
    for url in (f"{app_url}gradio_api/file={target}", f"{app_url}file={target}", f"{app_url}gradio_api/file={path}"):
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            assert e.code in (403, 404), url
            continue
        assert b"import" not in body and b"root:" not in body, url  # a page, not the file


def test_assets_are_served(app_url):
    with urllib.request.urlopen(f"{app_url}gradio_api/file={ROOT / 'assets' / 'examples' / 'star.png'}") as r:
        assert r.read(4) == b"\x89PNG"


def test_a_full_room_says_so_and_others_carry_on(client, app_url, monkeypatch):
    # no seat for anyone new (not len(POOL): a closing browser tab may free one meanwhile); those seated stay
    client.predict(api_name="/step")  # the client fixture only looked: its first step takes its seat
    monkeypatch.setattr(app.POOL, "max_sessions", 0)
    newcomer = Client(app_url, verbose=False)
    newcomer.predict(api_name="/load")  # looking needs no seat
    label, _, _ = newcomer.predict(handle_file(str(EXAMPLES[0])), api_name="/predict_image")  # nor predicting
    assert label["label"]
    with pytest.raises(AppError, match="seats are taken"):
        newcomer.predict(api_name="/step")  # training does
    assert status_step(client.predict(api_name="/step")) == 2


def test_forty_page_views_take_no_seat(app_url):
    seated = len(app.POOL)
    for _ in range(40):
        out = Client(app_url, verbose=False).predict(api_name="/load")
        assert "shared by every visitor" in out[4]
    assert len(app.POOL) <= seated  # (a tab from another test may have left meanwhile)


def test_four_learners_at_once_see_only_their_own_work(app_url):
    result = load_test.run(sessions=4, seconds=12, url=app_url)
    assert result["errors"] == 0
    assert result["cross_talk"] == 0
    assert result["orphan_runs"] <= 0 and result["runs_after"] == 0  # Reset/Load during Play leave no run behind
    assert result["steps"] > 0 and result["predictions"] > 0
    assert math.isfinite(result["p95_step_ms"])


def test_learners_start_from_one_read_of_the_shipped_model_but_never_share_its_weights():
    a, b = app.first_session(), app.first_session()
    shipped = app.pretrained()
    assert app.pretrained() is shipped  # read from disk once
    before = {k: v.clone() for k, v in shipped.state_dict().items()}
    a.step(2)
    a_weights, b_weights = a.model.state_dict(), b.model.state_dict()
    assert not torch.equal(a_weights["stem.conv.weight"], b_weights["stem.conv.weight"])  # a trained, b did not
    assert all(torch.equal(b_weights[k], before[k]) for k in before)  # b still starts where the shipped model is
    assert all(torch.equal(shipped.state_dict()[k], before[k]) for k in before)  # and the shipped copy is untouched


def test_no_input_is_recorded_in_the_browsers_run_history(app_url):
    # gradio's run history keeps each call's inputs in the browser: push_model's token would be among them
    config = json.loads(urllib.request.urlopen(app_url + "config", timeout=30).read())
    assert config["run_history"] is False
    assert "runs" not in config.get("footer_links", [])
