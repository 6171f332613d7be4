"""The launched app through its HTTP API (gradio_client), as a learner's browser or a script would use it.

Each Client is its own session, so these also check that learners don't see each other's training.
"""

import json
import re
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def status_of(outputs) -> str:
    return outputs[4]  # loss, accuracy, grad norm, heatmap charts, then the status line


def figure(value) -> dict:
    """A chart output: the figure as one line of JSON text (what the page's chart script reads)."""
    assert isinstance(value, str) and "\n" not in value, str(value)[:200]
    return json.loads(value)


def test_step_updates_charts_and_status(client):
    out = client.predict(api_name="/step")
    assert "**Step 1**" in status_of(out)
    loss = figure(out[0])
    assert loss["data"][0]["x"] == [1] and np.isfinite(loss["data"][0]["y"][0])
    grad = figure(out[2])
    assert {t["name"] for t in grad["data"]} >= {"stem", "block1.conv1", "fc"}
    assert grad["layout"]["yaxis"]["type"] == "log"


def test_a_visitor_sees_how_good_the_shipped_model_is_beside_its_step_0(app_url):
    """The shipped model's status said "Step 0" beside predictions at 100%, as if untrained: it says its held-out
    accuracy now, measured (not written down), and a learner's own network does not claim it."""
    visitor = Client(app_url, verbose=False)
    status = status_of(visitor.predict(api_name="/load"))
    assert "**Step 0**" in status
    acc = re.search(r"trained before you came \((\d+)% of 500 held-out images right\)", status)
    assert acc and int(acc[1]) >= 90, status  # the shipped model was trained 1,500 steps: ~99%
    assert "trained before you came" not in status_of(visitor.predict(api_name="/step"))


def test_every_label_the_page_asks_for_exists_in_both_languages():
    """A label missing from the page's translations shows as its key ("guided_stop" on a button); and every text
    the server writes at run time is there in both languages."""
    import ast
    import inspect

    import app

    asked = {
        node.args[0].value
        for node in ast.walk(ast.parse(inspect.getsource(app)))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "I18N" and node.args
        and isinstance(node.args[0], ast.Constant)
    }  # fmt: skip
    asked |= {f"learn_{claim}" for claim in app.LEARN_CLAIMS} | {f"guided_{e}" for e in app.guided.EXPERIMENTS}
    for lang in ("en", "zh"):
        assert asked - set(app.I18N.translations[lang]) == set(), lang
    assert set(app.SAY["en"]) == set(app.SAY["zh"])


def test_sessions_are_separate(app_url):
    a, b = Client(app_url, verbose=False), Client(app_url, verbose=False)
    for c in (a, b):
        c.predict(api_name="/load")
    a.predict(api_name="/step")
    a.predict(api_name="/step")
    out = b.predict(api_name="/step")
    assert "**Step 1**" in status_of(out)  # b's first step, whatever a did


def test_play_streams_until_paused(client):
    job = client.submit(api_name="/play")
    seen = []
    for out in job:
        seen.append(status_of(out))
        if len(seen) == 3:
            job.cancel()
            break
    assert len(seen) == 3
    time.sleep(2)
    after = status_of(client.predict(api_name="/step"))
    steps = int(after.split("**Step ")[1].split("**")[0])
    time.sleep(2)
    again = status_of(client.predict(api_name="/step"))
    assert int(again.split("**Step ")[1].split("**")[0]) == steps + 1  # nothing trains behind our back


def test_switching_shortcuts_is_live_and_marked_on_the_charts(client):
    client.predict(api_name="/step")
    out = client.predict(False, api_name="/all_shortcuts")
    assert "shortcuts on: 0/3" in status_of(out) and out[-1] == []
    assert any("shortcut off" in a["hovertext"] for a in figure(out[0])["layout"]["annotations"])
    out = client.predict(["block 2"], api_name="/block_shortcuts")
    assert "shortcuts on: 1/3" in status_of(out) and out[-1] is False


def test_predict_an_image_file_and_a_sketchpad_drawing(client, tmp_path):
    star = handle_file(str(ASSETS / "examples" / "star.png"))
    label, gallery, preview = client.predict(star, api_name="/predict_image")
    assert len(label["confidences"]) == 5 and label["label"]
    # the Teach tab shows the very picture a step would learn from: the 32x32 input, not the upload
    assert Image.open(preview).size == (32, 32)
    assert sum(c["confidence"] for c in label["confidences"]) <= 1.0001
    assert [caption for _, caption in [(g["image"], g["caption"]) for g in gallery]][:2] == ["stem", "block1"]

    pad = np.full((280, 280, 3), 255, np.uint8)
    pad[100:180, 100:108] = 0  # a bar, drawn
    path = tmp_path / "drawing.png"
    Image.fromarray(pad).save(path)
    payload = {"background": handle_file(str(path)), "layers": [], "composite": handle_file(str(path)), "id": None}
    label, _, _ = client.predict(payload, api_name="/predict_sketch")
    assert len(label["confidences"]) == 5


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not an image at all", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not an image"),
    ],
)
def test_a_bad_upload_gets_a_clear_message_and_the_session_goes_on(client, tmp_path, content, message):
    path = tmp_path / "photo.png"
    path.write_bytes(content)
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(path)), api_name="/predict_image")
    assert "**Step 1**" in status_of(client.predict(api_name="/step"))


def test_an_empty_drawing_says_so_and_clears_the_last_drawings_prediction(client, tmp_path):
    """The pad emptied by its own Undo: an error kept the last stroke's prediction on screen under error badges."""
    import app

    path = tmp_path / "blank.png"
    Image.new("RGB", (280, 280), "white").save(path)
    payload = {"background": handle_file(str(path)), "layers": [], "composite": handle_file(str(path)), "id": None}
    label, gallery, preview = client.predict(payload, api_name="/predict_sketch")
    assert not label and gallery == [] and preview is None
    request = SimpleNamespace(session_hash=client.session_hash, headers={})  # in-process: gradio's Warning warns
    with pytest.warns(UserWarning, match="The drawing is empty"):
        app.predict({"background": str(path), "layers": [], "composite": str(path)}, request)


def test_a_drawing_sent_as_many_layers_or_one_huge_layer_is_refused_before_it_is_decoded(client, tmp_path):
    """Gradio decodes every layer it is sent: one 258-kB 9000x9000 PNG sent as 24 layers took a server from 6.6 to
    10.6 GB. The pad's files are checked from their headers first; the page's pad sends one layer."""
    small, huge = tmp_path / "small.png", tmp_path / "huge.png"
    Image.new("RGB", (280, 280), "white").save(small)
    Image.new("1", (9000, 9000), 1).save(huge)  # ~10 kB on disk, 81 million pixels decoded
    many = {"background": None, "layers": [handle_file(str(small))] * 6, "composite": None, "id": None}
    with pytest.raises(AppError, match="A drawing of 6 layers: at most 4 are read"):
        client.predict(many, api_name="/predict_sketch")
    bomb = {"background": None, "layers": [handle_file(str(huge))], "composite": None, "id": None}
    with pytest.raises(AppError, match="too large"):
        client.predict(bomb, api_name="/predict_sketch")
    assert "**Step 1**" in status_of(client.predict(api_name="/step"))  # and the learner's session goes on


@pytest.mark.parametrize("lr, batch", [(0, 64), (-1, 64), (1e6, 64), (0.001, 0), (0.001, 10**6), (0.001, 1.5)])
def test_a_bad_learning_rate_or_batch_is_refused_and_the_old_one_kept(client, lr, batch):
    assert client.predict("adam", lr, batch, api_name="/configure") == ("adam", 0.001, 64)


def test_a_good_configuration_is_used_by_the_next_step(client):
    optimizer, lr, batch = client.predict("sgd", 0.05, 32, api_name="/configure")
    out = client.predict(api_name="/step")
    assert "**Step 1**" in status_of(out)


def test_teach_takes_one_step_on_your_image_and_compare_takes_none(client):
    with pytest.raises(AppError, match="Draw or upload"):
        client.predict("circle", "block1.conv1", api_name="/teach")
    # the session keeps its latest image: predict first, then teach it in the same session
    client.predict(handle_file(str(ASSETS / "examples" / "circle.png")), api_name="/predict_image")
    text, tensor, bars = client.predict("circle", "block1.conv1", api_name="/compare")
    assert "shortcuts on" in text and "no step" in text
    out = client.predict("circle", "block1.conv1", api_name="/teach")
    assert "**Step 1**" in status_of(out)  # teaching is a real, recorded step
    assert "Step 1 on your image" in out[7]
    with pytest.raises(AppError, match="not in the list of choices"):
        client.predict("not-a-class", "block1.conv1", api_name="/teach")


def test_reset_builds_a_deeper_net_with_its_own_switches(client):
    out = client.predict("shapes", "ResNet-20", 1, "adam", 0.001, 64, api_name="/reset")
    assert "20 layers" in status_of(out)
    with pytest.raises(AppError, match="imagenet is not in the list"):
        client.predict("imagenet", "ResNet-20", 1, "adam", 0.001, 64, api_name="/reset")


def test_download_a_model_and_load_it_back(client, tmp_path):
    client.predict(api_name="/step")
    path = client.predict(api_name="/download_model")
    assert Path(path).suffix == ".zip"
    out = client.predict(handle_file(path), "", api_name="/load_model")
    assert "**Step 0**" in status_of(out)  # a fresh session continuing from those weights
    with pytest.raises(AppError, match="Invalid file type"):
        client.predict(handle_file(str(ASSETS / "examples" / "star.png")), "", api_name="/load_model")
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("star.png", (ASSETS / "examples" / "star.png").read_bytes())
    with pytest.raises(AppError, match="holds config.json and model.safetensors"):
        client.predict(handle_file(str(tmp_path / "other.zip")), "", api_name="/load_model")


def test_a_learners_downloads_are_deleted_when_they_leave(client):
    import app

    client.predict(api_name="/download_model")
    folder = app.DOWNLOADS / client.session_hash
    assert any(p.suffix == ".zip" for p in folder.iterdir())
    app.close(SimpleNamespace(session_hash=client.session_hash))  # what the tab's unload event calls
    assert not folder.exists()
    key = uuid.uuid4().hex  # a browser with two tabs: closing one (not its last) left an empty folder behind
    for page in ("tab1", "tab2"):
        app.adopt(key, SimpleNamespace(session_hash=page))
    app.close(SimpleNamespace(session_hash="tab1"))
    assert not (app.DOWNLOADS / key).exists()
    app.close(SimpleNamespace(session_hash="tab2"))
    client.predict(api_name="/download_model")  # a page whose key cleans down to nothing named the whole folder
    app.close(SimpleNamespace(session_hash="!!!"))
    assert any(p.suffix == ".zip" for p in folder.iterdir()), "another page's closing deleted this learner's download"


def test_train_on_your_own_zip_and_a_bad_zip_is_explained(client, tmp_path):
    import zipfile

    good = tmp_path / "pets.zip"
    with zipfile.ZipFile(good, "w") as z:
        for i in range(4):
            z.writestr(f"cat/{i}.png", (ASSETS / "examples" / "circle.png").read_bytes())
            z.writestr(f"dog/{i}.png", (ASSETS / "examples" / "star.png").read_bytes())
    out = client.predict(
        handle_file(str(good)), "notebook (0.6M parameters)", 0, "adam", 0.001, 64, api_name="/use_zip"
    )
    assert out[-2]["value"] == "zip:pets"  # the dataset menu now offers the learner's own set
    assert "**Step 1**" in status_of(client.predict(api_name="/step"))
    model = handle_file(client.predict(api_name="/download_model"))
    out = client.predict(model, "", api_name="/load_model")  # back in, on the learner's own images: it was refused
    assert "**Step 0**" in status_of(out) and out[-2]["value"] == "zip:pets"
    stranger = Client(client.src, verbose=False)
    with pytest.raises(AppError, match=r"your own images \(pets.zip: cat, dog\): train on that zip first"):
        stranger.predict(model, "", api_name="/load_model")  # without the zip: said how, not "unknown dataset"
    bad = tmp_path / "evil.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("../../etc/passwd.png", b"x")
        z.writestr("cat/a.png", b"x")
    with pytest.raises(AppError, match="outside the archive"):
        client.predict(handle_file(str(bad)), "notebook (0.6M parameters)", 0, "adam", 0.001, 64, api_name="/use_zip")


def test_an_offline_hub_dataset_is_a_message_and_shapes_still_works(client, monkeypatch, tmp_path):
    """Said as a warning, with the Dataset box back on the network's dataset: it stayed on cifar10 while the
    network went on training on shapes."""
    import huggingface_hub.constants

    import app
    from resnet import hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "CACHE", tmp_path)
    out = client.predict("cifar10", "ResNet-20", 0, "adam", 0.001, 64, api_name="/reset")
    assert out[-2]["value"] == "shapes"
    assert "**Step 1**" in status_of(client.predict(api_name="/step"))
    request = SimpleNamespace(session_hash=client.session_hash, headers={})  # in-process: gradio's Warning warns
    with pytest.warns(UserWarning, match="offline"):
        app.reset("cifar10", "ResNet-20", 0, "adam", 0.001, 64, None, request)


def test_twins_train_side_by_side_and_lesions_chart_both(client):
    out = client.predict("ResNet-20", 0, api_name="/twin_reset")
    assert "**Step 0**" in out[4] and "20 layers" in out[4]
    out = client.predict(2, "ResNet-32", 0, api_name="/twin_step_n")  # the depth applies at a Reset, not now
    assert "**Step 2**" in out[4] and "plain: training loss" in out[4]
    names = {t["name"] for t in figure(out[0])["data"]}
    assert {"training (residual)", "training (plain)"} <= names
    assert figure(out[3])["data"]  # gradient routes measured at step 1
    assert "20 layers" in out[4]
    lesions = client.predict("ResNet-20", 0, api_name="/lesions")
    assert lesions[0] is not None and "**Step 2**" in lesions[5]  # the twins' panel as it stands


def test_the_twins_first_click_builds_them_at_the_depth_the_learner_picked(app_url):
    """Step xN, Play and Lesions built ResNet-20 twins whatever the depth box said, until a Reset."""
    first, other = Client(app_url, verbose=False), Client(app_url, verbose=False)
    assert "**Step 1** · 32 layers" in first.predict(1, "ResNet-32", 0, api_name="/twin_step_n")[4]
    assert "32 layers" in other.predict("ResNet-32", 0, api_name="/lesions")[5]  # a first Lesions builds them too
    assert "32 layers" in other.predict(api_name="/twin_pause")[4]


@pytest.mark.parametrize("api", ["/step_n", "/twin_step_n"])
@pytest.mark.parametrize("n", [0, 10_001, 2.5])
def test_an_n_out_of_range_is_refused_in_the_learners_words_and_nothing_trains(client, api, n):
    """The box has no bounds of its own (gradio's refusal is English only): the app says it, and N = 0 on the twins'
    Step xN is not Play."""
    import app

    args = (n, "ResNet-20", 0) if api == "/twin_step_n" else (n, None)
    with pytest.raises(AppError, match="whole number from 1 to 10000"):
        client.predict(*args, api_name=api)
    assert app.POOL.running(client.session_hash) == 0 and app.POOL.running(client.session_hash + ":twin") == 0


@pytest.mark.parametrize("then", ["run again", "pick another"])
def test_a_guided_run_ended_by_a_newer_run_or_another_pick_says_it_stopped(client, then):
    """A second tab's Run left the first tab saying "Running" for ever; picking another experiment mid-run left the
    old run going under the new one's text."""
    import app

    first, other = list(app.guided.EXPERIMENTS)[:2]
    job = client.submit(first, api_name="/guided_run")
    next(iter(job))  # it is running
    if then == "run again":
        second = client.submit(first, api_name="/guided_run")
        said = "an experiment was started again"
    else:
        client.predict(other, api_name="/guided_show")
        said = "Stopped. Run it again"
    deadline = time.monotonic() + 20
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.done() and said in job.outputs()[-1][2]
    if then == "run again":
        client.predict(api_name="/guided_stop")
        second.result()


WATCHED_TITLE = {  # an experiment's `chart` (what its "What to watch" names) -> the title of the chart shown first
    "loss": "Loss",
    "twin_loss": "Loss",
    "lesions": "Lesions: one block bypassed at test time",
    "gradient_bars": "Gradient norm per layer, input → output",
}


@pytest.mark.parametrize("experiment", ["shortcuts_off", "plain_vs_residual", "lesion", "lr_1000", "drawing_gradients"])
def test_a_guided_experiments_recorded_run_shows_the_chart_its_text_names(client, experiment):
    """The recorded run showed one chart, the loss: an empty one saying "Press ▶ Play or a Step button" for the
    drawing (no step is taken), the loss instead of the lesion chart for the lesions, no before/after bars for the
    shortcuts switched off. Now both of the run's charts, the watched one first; the live ones say where a run draws."""
    import app

    guide, first, second, note, live, readout, status = client.predict(experiment, api_name="/guided_show")
    first, second = figure(first), figure(second)
    assert first["layout"]["title"]["text"] == WATCHED_TITLE[app.guided.get(experiment).chart]
    for shown in (first, second):  # recorded: data in each, no "how to start" hint
        assert any(len(trace.get("x") or []) for trace in shown["data"]), shown["layout"]["title"]
        assert app.charts.EMPTY_TEXT not in json.dumps(shown)
    if experiment == "shortcuts_off":
        assert second["layout"]["title"]["text"].startswith("Switch at step")  # the before/after bars
    assert "Run this experiment" in figure(live)["layout"]["annotations"][0]["text"] and status == ""


def test_a_guided_run_counts_its_phases_from_one(client):
    import app

    first = next(iter(app.guided.EXPERIMENTS))
    lines = [out[2] for out in client.submit(first, api_name="/guided_run")]
    progress = [line for line in lines if line.startswith("Running")]
    phases = len(app.guided.get(first).fast.phases)
    assert progress and f"phase 1 of {phases}" in progress[0], progress[:2]
    assert not any(f"phase 0 of {phases}" in line for line in progress)


def status_step(outputs) -> int:
    return int(status_of(outputs).split("**Step ")[1].split("**")[0])


RESET = ("shapes", "notebook (0.6M parameters)", 0, "adam", 1e-3, 64, None)  # dataset, net, seed, opt, lr, batch, x


@pytest.mark.parametrize("how", ["reset", "twin_reset"])
def test_reset_during_play_ends_the_old_run(client, how):
    import app

    play, reset, key, args = ("/play", "/reset", client.session_hash, ())
    if how == "twin_reset":
        play, reset, key, args = ("/twin_play", "/twin_reset", client.session_hash + ":twin", ("ResNet-20", 0))
    job = client.submit(*args, api_name=play)
    next(iter(job))  # it is playing
    assert app.POOL.running(key) == 1
    if how == "reset":
        client.predict(*RESET, api_name=reset)
    else:
        client.predict("ResNet-20", 0, api_name=reset)
    deadline = time.monotonic() + 10
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.done() and app.POOL.running(key) == 0  # no orphan run goes on training the old session
    if how == "reset":
        assert status_step(client.predict(api_name="/step")) == 1
        time.sleep(1)
        assert status_step(client.predict(api_name="/step")) == 2  # and nothing trains the new one behind our back


@pytest.mark.parametrize("twins", [False, True], ids=["play", "twin_play"])
def test_pause_ends_the_run_and_its_stream_ends_on_where_pause_stopped(client, twins):
    """Pause cancels nothing: the run ends within a turn and its own stream's last update is Pause's step, so no
    update the run sent before Pause can land after Pause's answer with an older step."""
    play, pause = ("/twin_play", "/twin_pause") if twins else ("/play", "/pause")

    def step_of(outputs) -> int:
        return int((outputs[-1] if twins else status_of(outputs)).split("**Step ")[1].split("**")[0])

    job = client.submit(*(("ResNet-20", 0) if twins else ()), api_name=play)
    next(iter(job))  # it is playing
    paused = step_of(client.predict(api_name=pause))
    deadline = time.monotonic() + 10
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.done(), "the run went on after Pause"
    assert step_of(job.outputs()[-1]) == paused  # the stream's last word: the step Pause showed


def test_a_run_a_newer_run_took_over_says_so_on_its_page(client):
    """Play, then Step xN of the same learner (as from a second tab): the Play's stream ends saying why, instead of
    leaving its page on a status that silently stops moving."""
    job = client.submit(api_name="/play")
    next(iter(job))  # it is playing
    out = client.predict(3, None, api_name="/step_n")
    assert "Stopped here" not in status_of(out)
    deadline = time.monotonic() + 10
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.done() and "Stopped here: a newer Play or Step ×N" in status_of(job.outputs()[-1])


@pytest.mark.parametrize(
    ("seed", "lr", "batch", "said"),
    [(10**30, 1e-3, 64, "seed must be"), (2.5, 1e-3, 64, "seed must be"), (0, None, 64, "Type a number"),
     (0, 1e-3, None, "Type a number"), (0, 1e-3, 0, "batch size must be"), (0, 1e-3, 1.5, "batch size must be")],
)  # fmt: skip
def test_reset_with_settings_that_cannot_work_says_why_and_keeps_the_learners_network(client, seed, lr, batch, said):
    """A long seed overflowed torch's generator and an emptied box failed on float(None): both showed the bug
    message; a batch of 0 was taken and failed at the first step."""
    from gradio_client.exceptions import AppError

    client.predict(api_name="/step")
    with pytest.raises(AppError, match=said):
        client.predict("shapes", "notebook (0.6M parameters)", seed, "adam", lr, batch, None, api_name="/reset")
    assert status_step(client.predict(api_name="/step")) == 2  # the same network, trained on


def test_a_users_mistake_is_shown_and_an_internal_error_is_logged_with_an_id_it_shows(caplog):
    import logging
    import re

    import gradio as gr

    import app
    from resnet.errors import UserError

    @app.user_errors
    def handler(kind):
        if kind == "user":
            raise UserError("The learning rate must be a number in (0, 10000].")
        raise ValueError("Expected size 3 but got size 4 for tensor number 1 in the list")  # a library's internals

    with caplog.at_level(logging.INFO, logger="playground"), pytest.raises(gr.Error, match="rate must be") as shown:
        handler("user")
    # one line in the log, and no traceback from gradio's queue: a learner's typo is not a bug
    assert "handler refused: The learning rate must be" in caplog.text and "Traceback" not in caplog.text
    assert not shown.value.print_exception
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="playground"), pytest.raises(gr.Error) as shown:
        handler("internal")
    assert "tensor number" not in shown.value.message
    request_id = re.search(r"request ([0-9a-f]{8})", shown.value.message).group(1)
    assert request_id in caplog.text and "tensor number 1" in caplog.text  # logged in full, under the id shown
    assert "Traceback" in caplog.text and not shown.value.print_exception  # once: ours, not gradio's again


def test_charts_at_step_0_say_how_to_start_and_stop_saying_it_after_a_step(client):
    fresh = client.predict(*RESET, api_name="/reset")
    for fig in map(figure, fresh[:4]):  # loss, accuracy, gradient norms, heatmap
        texts = [a["text"] for a in fig["layout"]["annotations"]]
        assert "Press ▶ Play or a Step button" in texts and fig["layout"]["xaxis"]["range"] == [0, 100]
    stepped = client.predict(api_name="/step")
    for fig in map(figure, stepped[:4]):
        assert "Press ▶ Play or a Step button" not in [a["text"] for a in fig["layout"]["annotations"]]


def test_a_learner_takes_their_run_away_as_csv(client):
    import csv

    client.predict(api_name="/step")
    client.predict(False, api_name="/all_shortcuts")
    client.predict(api_name="/step")
    rows = list(csv.DictReader(open(client.predict(api_name="/download_run"))))
    assert [r["step"] for r in rows] == ["0", "1", "2"] and "shortcut off" in rows[1]["events"]  # after step 1
    assert "checkpoint" in rows[0]["events"]  # where the run began: the shipped trained model


def test_switching_shortcuts_off_changes_the_prediction_though_no_weight_changed(client):
    # the Learn tab's claim: the same weights, the shortcuts off, and the network sees the drawing differently
    label, _, _ = client.predict(handle_file(str(ASSETS / "examples" / "star.png")), api_name="/predict_image")
    off = client.predict(False, api_name="/all_shortcuts")[5]
    before = {c["label"]: c["confidence"] for c in label["confidences"]}
    after = {c["label"]: c["confidence"] for c in off["confidences"]}
    assert label["label"] == "star" and before["star"] > 0.9  # the shipped model knows its star
    assert after.get("star", 0) < before["star"] - 0.3, (before, after)  # off: it no longer does
    on = client.predict(True, api_name="/all_shortcuts")[5]
    assert on["label"] == "star"  # and back on, it does again: nothing was learned or lost


def test_the_default_seat_count_fits_the_hardware():
    # 32 learners training at once on a CPU (2 cores answer them, slowly), 128 on a GPU; page views take none
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PLAYGROUND_MAX_SESSIONS"}
    code = "import app, torch; print(app.POOL.max_sessions, torch.cuda.is_available())"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    seats, cuda = out.stdout.split()
    assert int(seats) == (128 if cuda == "True" else 32), out.stderr[-500:]


def test_the_twins_tab_shows_axes_and_how_to_start_before_any_twin_exists():
    import app

    seats = len(app.POOL)
    *figures, status = app.twin_start(SimpleNamespace(session_hash="a page that only looks", headers={}))
    assert all(
        "Press ▶ Play or a Step button" in [a["text"] for a in figure(f)["layout"]["annotations"]] for f in figures
    )
    assert "first click" in status and len(app.POOL) <= seats  # and looking built no twins


def test_a_chinese_browser_gets_its_errors_in_chinese(app_url, tmp_path):
    zh = Client(app_url, verbose=False, headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    zh.predict(api_name="/load")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(AppError, match="不是能读取的图片"):
        zh.predict(handle_file(str(junk)), api_name="/predict_image")
    with pytest.raises(AppError, match="请先选择一个按类别分文件夹的 .zip"):
        zh.predict(None, "ResNet-20", 0, "adam", 1e-3, 64, None, api_name="/use_zip")
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("star.png", (ASSETS / "examples" / "star.png").read_bytes())
    with pytest.raises(AppError, match="检查点 zip 应包含"):
        zh.predict(handle_file(str(tmp_path / "other.zip")), "", None, api_name="/load_model")


def test_a_shortcut_switch_gets_a_before_after_readout_per_layer(client):
    first = client.predict(api_name="/step")
    assert "switch a shortcut" in figure(first[6])["layout"]["annotations"][0]["text"]  # nothing to compare yet
    client.predict(api_name="/step")
    client.predict(False, api_name="/all_shortcuts")
    client.predict(api_name="/step")
    out = client.predict(api_name="/step")
    readout = figure(out[6])
    assert readout["layout"]["title"]["text"].startswith("Switch at step 2: loss")
    before, after = readout["data"]
    assert before["x"] == after["x"] and "stem" in before["x"] and len(before["x"]) >= 8  # one pair per layer
    assert all(r is None or r >= 0 for r in before["customdata"])  # after/before (0: an unused projection)


def test_a_rejected_steps_message_is_in_chinese_on_the_chinese_page():
    """The session writes English; a learner on the Chinese page read "step 3 rejected: an update 18655x ..."."""
    import app

    session = app.new_session(lr=1000, batch_size=8)
    messages = session.step(2)["messages"]
    assert messages, "lr 1000 should have had a step rejected"
    token = app.LANG.set("zh")
    try:
        shown = [app.in_language(m) for m in messages]
    finally:
        app.LANG.reset(token)
    assert all("被拒绝" in m and "权重已恢复" in m and "rejected" not in m for m in shown), shown
    assert app.in_language(messages[0]) == messages[0]  # the English page: as written


def test_closing_one_tab_leaves_another_tab_of_the_same_browser_playing_with_its_seat(app_url):
    """Tabs of one browser share its learner key: the first tab's close ended the second's Play, unsaid."""
    import app

    tab1, tab2 = Client(app_url, verbose=False), Client(app_url, verbose=False)
    key = "b" * 32  # the browser's key, as `adopt` ties each page to it
    app.LEARNERS[tab1.session_hash] = app.LEARNERS[tab2.session_hash] = key
    job = tab2.submit(api_name="/play")
    updates = iter(job)
    next(updates)  # tab 2 plays
    app.close(SimpleNamespace(session_hash=tab1.session_hash))  # tab 1's unload
    before = status_step(next(updates))
    assert status_step(next(updates)) > before and app.POOL.running(key) == 1  # still playing
    tab2.predict(api_name="/pause")
    app.close(SimpleNamespace(session_hash=tab2.session_hash))  # the last tab: the seat waits a reload's grace
    assert app.POOL.peek(key) is not None


def test_the_twins_reset_takes_a_seat_only_if_one_is_free_and_their_pause_takes_none(monkeypatch):
    import app

    monkeypatch.setattr(app.POOL, "max_sessions", len(app.POOL))  # a full room
    page = SimpleNamespace(session_hash="a late twin learner", headers={})
    with pytest.raises(app.gr.Error, match="seats are taken"):
        app.twin_reset("ResNet-20", 0, page)
    *_, status = app.twin_pause(page)  # a Pause before any twins: it shows how to start, and builds nothing
    assert "first click" in status and app.POOL.peek(app.twin_key(page)) is None


def test_an_upload_with_a_transparent_background_is_predicted_as_drawn_on_white(client, tmp_path):
    """Gradio's RGB conversion of an upload turned a transparent background black: a circle came out as noise."""
    drawn = Image.open(ASSETS / "examples" / "circle.png").convert("L")
    ink = Image.fromarray(255 - np.asarray(drawn))  # the strokes opaque, the background transparent ...
    black = Image.new("L", drawn.size, 0)  # ... and black beneath, as most programs save it
    Image.merge("RGBA", (black, black, black, ink)).save(tmp_path / "circle.png")
    label, _, preview = client.predict(handle_file(str(tmp_path / "circle.png")), api_name="/predict_image")
    assert label["label"] == "circle"
    assert np.asarray(Image.open(preview["path"] if isinstance(preview, dict) else preview)).mean() > 128  # white


def test_a_runs_label_follows_the_image_drawn_or_uploaded_during_the_run_and_a_new_dataset_clears_it(client, tmp_path):
    """The label beside the charts showed the image of Play's click for the whole run (a square's 100% over a
    circle); and a zip with other classes left the Teach tab showing an image it then refused to learn from."""
    job = client.submit(None, api_name="/play")  # no image when Play starts
    updates = iter(job)
    next(updates)
    for shape in ("circle", "star"):
        client.predict(handle_file(str(ASSETS / "examples" / f"{shape}.png")), api_name="/predict_image")
        label = next(updates)[5]
        assert label and label["label"] == shape, (shape, label)
    client.predict(api_name="/pause")
    import zipfile

    good = tmp_path / "pets.zip"
    with zipfile.ZipFile(good, "w") as z:
        for i in range(4):
            z.writestr(f"cat/{i}.png", (ASSETS / "examples" / "circle.png").read_bytes())
            z.writestr(f"dog/{i}.png", (ASSETS / "examples" / "star.png").read_bytes())
    net = "notebook (0.6M parameters)"
    out = client.predict(handle_file(str(good)), net, 0, "adam", 0.001, 64, api_name="/use_zip")
    assert out[-1] is None  # the Teach tab's picture, gone with the classes it was drawn for


def test_teachs_loss_is_the_training_modes_on_one_image_high_where_the_prediction_is_sure(client):
    """The Teach tab says so: a circle predicted at 99.9% gave "loss 1.66", which looked like a contradiction. Same
    weights: evaluation mode ~0.001, training mode (BatchNorm on this one image's statistics) ~1.6."""
    import math
    import re

    label, _, _ = client.predict(handle_file(str(ASSETS / "examples" / "circle.png")), api_name="/predict_image")
    sure = {c["label"]: c["confidence"] for c in label["confidences"]}["circle"]
    text = client.predict("circle", "block1.conv1", api_name="/teach")[7]
    loss = float(re.search(r"loss (\d+\.\d+)", text)[1])
    assert sure > 0.99 and loss > 100 * -math.log(sure), (sure, loss)
    assert "training mode" in text and "BatchNorm" in text
