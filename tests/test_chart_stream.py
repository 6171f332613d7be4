"""Streamed charts: what a learner's browser draws from a FigureStream's texts is exactly the figure the server
built, after any run of updates (new points, a thinning that doubles or shrinks its stride, a shortcut marker, an
empty chart, a new net); and what gradio sends per update is the new points, a small part of the figure."""

import ast
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from gradio.utils import diff

from resnet import charts
from resnet.session import History

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["stem", "block1.conv1", "block1.conv2", "block2.shortcut", "fc"]


class Reader:
    """CHART_JS's reading of a chart's values, line for line in Python: a text that extends the last one is applied
    from where that one ended, anything else (another text, a figure) is read from its first line."""

    def __init__(self):
        self.text, self.figure = None, None

    def read(self, value) -> dict:
        value = value if isinstance(value, str) else json.dumps(value)
        if value == self.text:
            return self.figure
        if self.text is not None and value.startswith(self.text) and value[len(self.text)] == "\n":
            patches = value[len(self.text) + 1 :].split("\n")
        else:
            base, *patches = value.split("\n")
            self.figure = json.loads(base)
        for line in patches:
            apply(self.figure, json.loads(line))
        self.text = value
        return self.figure


def apply(figure: dict, patch: dict):
    """One patch line, as CHART_JS's apply."""
    for i, trace in patch.get("traces", {}).items():
        figure["data"][int(i)] = trace
    for i, arrays in patch.get("arrays", {}).items():
        for key, e in arrays.items():
            edit(figure["data"][int(i)][key], e)
    if "layout" in patch:
        figure["layout"] = patch["layout"]


def edit(array: list, e: list):
    """One array's [keep, tail] (or one per row), in place, as CHART_JS's edit."""
    if isinstance(e[0], list):
        for row, sub in zip(array, e):
            edit(row, sub)
        return
    del array[e[0] :]
    array.extend(e[1])


def as_sent(figure: dict) -> dict:
    """The figure as the browser gets it, through JSON."""
    return json.loads(json.dumps(figure))


def record(step: int, layers=LAYERS) -> dict:
    """A training step's record as a Session makes it; a switched-off projection gets no gradient now and then."""
    norms = {n: 0.0 if n.endswith("shortcut") and step % 7 == 0 else 1 / (step + k + 1) for k, n in enumerate(layers)}
    return {"step": step, "loss": 2.3 / (1 + step / 50), "acc": min(1.0, step / 300), "grad_norm": norms}


def small_charts(history, revision=0) -> list[dict]:
    """The four live charts, with few points per series, so a short run doubles their strides a few times."""
    return [
        charts.loss_figure(history, revision, max_points=20),
        charts.accuracy_figure(history, revision, max_points=20),
        charts.grad_norm_figure(history, revision, max_points=16),
        charts.grad_heatmap_figure(history, revision, max_points=12),
    ]


def a_learners_updates():
    """Chart updates (lists of figures) of a learner who starts at an empty chart, trains (a History that thins
    itself), switches the shortcuts off, resets to a shallower net (shorter series, other layers) and resets again."""
    history = History(80)  # thins itself at 81 records: odd steps only, then sparser
    yield small_charts(history)
    for step in range(1, 400):
        history.add_step(record(step))
        if step % 10 == 0:
            history.add_eval({"step": step, "loss": 2.0 / step, "acc": step / 400})
        if step == 150:
            history.add_event(step, "shortcut", "shortcut off: all blocks")
        if step % (1 + step % 3) == 0:  # 1, 2 or 3 steps per update
            yield small_charts(history)
    shallow = History(80)  # Reset: a new model (zoom resets), three layers
    yield small_charts(shallow, revision=1)
    for step in range(1, 30):
        shallow.add_step(record(step, LAYERS[:3]))
        yield small_charts(shallow, revision=1)
    yield small_charts(History(80), revision=2)  # Reset again: empty, and data after it
    fresh = History(80)
    for step in range(1, 5):
        fresh.add_step(record(step))
        yield small_charts(fresh, revision=2)


def test_thin_on_grid_keeps_its_picks_as_the_run_grows():
    records, before, strides = [], None, 0
    for step in range(1, 1000):
        records.append({"step": step})
        kept = charts.thin_on_grid(records, 50)
        assert len(kept) <= 50 and kept[-1] is records[-1] and kept[0] is records[0]
        if before is not None and len(kept) >= len(before) - 1:
            assert kept[: len(before) - 1] == before[:-1]  # all but the newest stay put
        else:
            strides += before is not None  # the stride doubled: every other point goes
        before = kept
    assert strides == 5  # 1 -> 32 over 1,000 steps, 50 points
    history = History(200)
    for record in records:
        history.add_step(record)
    assert all(r["step"] % 2 for r in history.steps[:-150])  # a History thins itself: odd steps, then sparser
    kept = charts.thin_on_grid(history.steps, 50)
    assert {r["step"] // 32 for r in kept} == {r["step"] // 32 for r in history.steps}  # a point in every cell


def test_every_update_decodes_to_exactly_the_figure_built():
    streams, readers = [charts.FigureStream() for _ in range(4)], [Reader() for _ in range(4)]
    appended = bases = 0
    for figures in a_learners_updates():
        for stream, reader, figure in zip(streams, readers, figures):
            before = stream.text
            text = stream.update(figure)
            assert reader.read(text) == as_sent(figure)  # the page that saw every update
            assert Reader().read(text) == as_sent(figure)  # a page that gets this text whole
            if text != before:
                extends = bool(before) and text.startswith(before + "\n")
                appended, bases = appended + extends, bases + (not extends)
    assert appended > 8 * bases, (appended, bases)  # new points are appended; a new base is rare


def test_a_new_base_when_the_trace_count_changes_or_the_text_would_pass_its_cap(monkeypatch):
    monkeypatch.setattr(charts, "STREAM_MAX", 6_000)
    stream, reader, texts = charts.FigureStream(), Reader(), []
    for figures in a_learners_updates():
        texts.append(stream.update(figures[2]))  # gradient norms: a line per layer
        assert reader.read(texts[-1]) == as_sent(figures[2])
        assert len(texts[-1]) <= 6_000 or "\n" not in texts[-1]  # a base may be bigger: then each update is one
    deeper, shallower = next((a, b) for a, b in zip(texts, texts[1:]) if b.count("stem") < a.count("stem"))
    assert not shallower.startswith(deeper)  # five layers, then three: a new base
    assert sum(not b.startswith(a) for a, b in zip(texts, texts[1:])) >= 4  # the cap started new bases too


def test_a_plain_figure_between_streamed_texts_is_drawn_too():
    history, stream, reader = History(100), charts.FigureStream(), Reader()
    for step in range(1, 40):
        history.add_step(record(step))
        figure = charts.loss_figure(history)
        value = figure if step % 10 == 0 else stream.update(figure)  # a Step click between two Plays
        assert reader.read(value) == as_sent(figure)
        assert reader.read(json.dumps(figure)) == as_sent(figure)  # a figure as a JSON string


def chart_js() -> str:
    """app.CHART_JS, read from app.py's source (importing app would start its session pool)."""
    tree = ast.parse((ROOT / "app.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "CHART_JS")
    return ast.literal_eval(node.value)


@pytest.mark.skipif(shutil.which("node") is None, reason="no node to run the page's JS")
def test_the_pages_own_js_draws_what_the_python_reader_reads():
    """CHART_JS itself, run by node with a stand-in Plotly, on a learner's updates of two charts and a plain figure."""
    values, expected = [], []
    streams = [charts.FigureStream(), charts.FigureStream()]
    for n, figures in enumerate(a_learners_updates()):
        for stream, figure, chart in zip(streams, (figures[0], figures[3]), (0, 1)):
            value = figure if n == 100 else stream.update(figure)
            for _ in range(2 if n == 50 else 1):  # the same value again: gradio's final message repeats the last
                values.append([chart, value])
                expected.append(as_sent(figure))
    harness = """
    const [js, values] = JSON.parse(require('fs').readFileSync(0, 'utf8'));
    const drawn = [];
    const charts = [0, 1].map(chart => {
      const props = {value: null}, chartWatch = {};
      const Plotly = {react: (div, data, layout) => { drawn.push(JSON.parse(JSON.stringify({chart, data, layout}))); }};
      new Function('element', 'props', 'watch', 'Plotly', js)(
        {querySelector: () => ({})}, props, (key, fn) => { chartWatch[key] = fn; }, Plotly);
      return {props, chartWatch};
    });
    const out = [];
    for (const [chart, value] of values) {
      charts[chart].props.value = value;
      charts[chart].chartWatch.value();
      const last = drawn.filter(d => d.chart === chart).pop();
      const {datarevision, ...layout} = last.layout;
      out.push({data: last.data, layout, datarevision});
    }
    console.log(JSON.stringify(out));
    """
    result = subprocess.run(["node", "-e", harness], input=json.dumps([chart_js(), values]), capture_output=True,
                            text=True, timeout=60, check=True)  # fmt: skip
    drawn = json.loads(result.stdout)
    assert len(drawn) == len(expected)
    for got, want in zip(drawn, expected):
        assert {"data": got["data"], "layout": got["layout"]} == want
    for chart in (0, 1):  # a new datarevision for each new value (arrays changed in place), none for the same
        seen = [(json.dumps(value), got["datarevision"]) for (c, value), got in zip(values, drawn) if c == chart]
        assert all((b[1] > a[1]) == (b[0] != a[0]) for a, b in zip(seen, seen[1:]))


def test_per_update_gradio_sends_a_small_part_of_the_figure(one_thread):
    """A real (small) net's run of 1,000 steps, the four live charts updated every 3 steps as Play does."""
    from resnet import Session, TrainConfig, cifar_config

    session = Session(TrainConfig(batch_size=2, eval_every=50, eval_size=10, augment=False), cifar_config(1, width=4))
    streams = [charts.FigureStream() for _ in range(4)]
    keys = ("loss", "accuracy", "grad_norm", "grad_heatmap")
    last, sent, whole = None, [], []
    while session.step_count < 1000:
        session.step(min(3, 1000 - session.step_count))
        figures = charts.live_figures(session.history)
        texts = [s.update(figures[k]) for s, k in zip(streams, keys)]
        if last is not None:
            sent.append(len(json.dumps(diff(last, texts))))  # what gradio sends for this update
            whole.append(len(json.dumps([figures[k] for k in keys])))  # what it sent before streams
        assert all(len(t) <= charts.STREAM_MAX for t in texts)
        last = texts
    assert [Reader().read(t) for t in texts] == [as_sent(figures[k]) for k in keys]
    assert len(figures["loss"]["data"][0]["x"]) > 200  # the charts are full, not trivially small
    per_update, figures_size = sum(sent) / len(sent), sum(whole) / len(whole)
    assert per_update < 0.1 * figures_size, f"{per_update:.0f} bytes per update, the figures {figures_size:.0f}"
