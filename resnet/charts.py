"""Plotly figures, as plain JSON-ready dicts, from a session's history, and the text that streams them.

Dicts rather than `go.Figure`s because the app streams them a few times a second to a chart that calls
`Plotly.react`: building a dict is cheap. A streamed chart keeps at most `max_points` per series, however long the
run, picked on a grid of step numbers (`thin_on_grid`), so consecutive figures share their arrays' prefixes; a
`FigureStream` turns them into a text that only grows by what changed, so what gradio sends per update (its diff
of two values) is the new points, not every point again. Layers are coloured by depth (dark = near the input), so
vanishing gradients read as a colour order.
"""

import functools
import json
import math
import re

from plotly.colors import sample_colorscale

EVENT_COLOURS = {
    "shortcut": "#d62728",
    "lr": "#7f7f7f",
    "optimizer": "#7f7f7f",
    "batch": "#7f7f7f",
    "rejected": "#ff7f0e",
    "teach": "#2ca02c",
}
LOG_AXIS = {"type": "log"}
TWIN_DASH = {"residual": "solid", "plain": "dot"}
TWIN_COLOURS = {"residual": "#1f77b4", "plain": "#d62728"}


def thin(records: list[dict], max_points: int) -> list[dict]:
    """At most max_points records, evenly spaced, always ending with the newest: session.thin, as a History thins
    itself. For a chart drawn once; a streamed one thins with `thin_on_grid`, whose picks stay put as the run grows."""
    from .session import thin as thin_records

    return thin_records(records, max_points)


def thin_on_grid(records: list[dict], max_points: int) -> list[dict]:
    """At most max_points records (each with an int "step"): the first of each run of `stride` step numbers, the
    stride the smallest power of 2 that fits the records' span, and the newest. Unlike `thin`'s, a kept record
    stays kept as the run grows (until the stride doubles, a few times a run), so a streamed chart's consecutive
    figures share their arrays' prefixes and a FigureStream sends only the new points."""
    if len(records) < 2:
        return list(records)
    first, last, stride = records[0]["step"], records[-1]["step"], 1
    while last // stride - first // stride + 1 > max(1, max_points - 1):  # one point left for the newest
        stride *= 2
    kept, run = [], None
    for r in records:  # the first of each run, not multiples of stride: a thinned History may hold odd steps only
        if r["step"] // stride != run:
            kept.append(r)
            run = r["step"] // stride
    if kept[-1] is not records[-1]:
        kept.append(records[-1])
    return kept


def layer_colours(names: list[str]) -> dict[str, str]:
    return dict(zip(names, _viridis(len(names))))


@functools.cache
def _viridis(n: int) -> tuple[str, ...]:
    """n colours from dark to light; plotly validates the colour scale on every call (~0.3 ms): once per n."""
    return tuple(sample_colorscale("Viridis", [i / max(n - 1, 1) for i in range(n)]))


def _layout(title: str, ytitle: str, revision, events=(), log=False, labels=True, **extra) -> dict:
    """labels: name each shortcut switch above the plot (the loss and accuracy charts); the others draw lines."""
    shapes, annotations = [], []
    # the newest few, so a long run's markers don't bury the lines; a rejected step's last, over the lr change at
    # the same step that caused it (drawn after, the grey line hid the orange one)
    for e in sorted(events[-30:], key=lambda e: e["kind"] == "rejected"):
        colour = EVENT_COLOURS.get(e["kind"], "#7f7f7f")
        shapes.append(
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": e["step"],
                "x1": e["step"],
                "y0": 0,
                "y1": 1,
                "line": {"color": colour, "width": 1, "dash": "dash"},
            }
        )
        if labels and e["kind"] in ("shortcut", "rejected"):
            short = e["text"].replace("shortcut ", "").replace(": all blocks", ": all").replace("block ", "b")
            short = "rejected" if e["kind"] == "rejected" else short
            annotations.append(
                {
                    "x": e["step"],
                    "y": 1,
                    "xref": "x",
                    "yref": "paper",
                    "text": short,
                    "showarrow": False,
                    "xanchor": "center",
                    "yanchor": "bottom",
                    "font": {"size": 10, "color": colour},
                    "hovertext": e["text"] if e["kind"] == "shortcut" else short,  # a rejection's reason: the status
                }
            )
    layout = {
        "title": {"text": title, "font": {"size": 14}},
        "uirevision": revision,
        "margin": {"l": 55, "r": 10, "t": 45, "b": 35},
        "xaxis": {"title": {"text": "step"}},
        # a linear chart plots losses or accuracies: from 0 up (one point's autorange went down to -0.9)
        "yaxis": {"title": {"text": ytitle}, **(LOG_AXIS if log else {"rangemode": "tozero"})},
        "legend": {"font": {"size": 10}},
        "shapes": shapes,
        "annotations": annotations,
        "template": "plotly_white",
    }
    layout.update(extra)
    return layout


EMPTY_TEXT = "Press ▶ Play or a Step button"  # the twins' tab has Step ×N only


def _figure(data: list[dict], layout: dict) -> dict:
    """A live chart. With nothing to draw yet it says how to start, over axes of the run to come (a first step's
    scale), instead of Plotly's empty -1..1 with the start marker as a vertical line through it."""
    if any(len(trace.get("x") or []) for trace in data):
        return _log_ticks({"data": data, "layout": layout})
    yaxis = layout.get("yaxis", {})
    log = yaxis.get("type") == "log"
    empty = {
        **layout,
        "shapes": [],
        "annotations": [
            {"text": EMPTY_TEXT, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5, "showarrow": False,
             "font": {"size": 16, "color": "#888"}}
        ],
        "xaxis": {**layout.get("xaxis", {}), "range": [0, 100]},
        # log axes: 4 decades, labelled at the powers of 10 only (as `_log_ticks` does for such a range)
        "yaxis": {**yaxis, "range": yaxis.get("range", [-3, 1] if log else [0, 2.5]),
                  **({"minorloglabels": "none"} if log else {})},
    }  # fmt: skip
    return {"data": data, "layout": empty}


def _log_ticks(figure: dict) -> dict:
    """A log axis whose data hold fewer than two powers of ten labels its ticks between them in full (0.2, 0.5),
    not as Plotly's bare digits: a "5" under a "1" reads as five. Over more, only the powers of ten: full labels of
    every digit overlapped."""
    yaxis = figure["layout"].get("yaxis", {})
    if yaxis.get("type") != "log":
        return figure
    values = [v for trace in figure["data"] for v in trace.get("y") or () if v is not None and v > 0]
    if values:  # the powers of ten within the data: with fewer than two, they alone leave one label or none
        powers = math.floor(math.log10(max(values))) - math.ceil(math.log10(min(values))) + 1
        # else 1, 2 and 5 of each decade, in full (every digit, in full, overlapped on a 360-px chart)
        few = {"minorloglabels": "complete", "dtick": "D2"}
        figure["layout"]["yaxis"] = {**yaxis, **({"minorloglabels": "none"} if powers >= 2 else few)}
    return figure


def _line_mode(records: list) -> str:
    """A line needs two points: the first few steps also get markers, so step 1 is visible, not an empty chart."""
    return "lines+markers" if len(records) < 20 else "lines"


def _runs(history) -> dict:
    """A history, or {"residual": history, "plain": history} for twins -> {label: history}."""
    return history if isinstance(history, dict) else {"": history}


def _curves(history, field: str, train_name: str, max_points: int) -> list[dict]:
    """Training (per batch) and held-out lines of one field; twins are coloured by net, held-out with markers."""
    data = []
    for label, h in _runs(history).items():
        steps, evals = thin_on_grid(h.steps, max_points), thin_on_grid(h.evals, max_points)
        name = f" ({label})" if label else ""
        train_colour, held_colour = (TWIN_COLOURS[label],) * 2 if label in TWIN_COLOURS else ("#1f77b4", "#ff7f0e")
        data.append(
            {
                "type": "scatter",
                "mode": _line_mode(steps),
                "name": f"{train_name}{name}",
                "opacity": 0.6,
                "x": [r["step"] for r in steps],
                "y": [r[field] for r in steps],
                "line": {"color": train_colour, "dash": TWIN_DASH.get(label, "solid")},
            }
        )
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": f"held-out{name}",
                "x": [r["step"] for r in evals],
                "y": [r[field] for r in evals],
                "line": {"color": held_colour, "dash": TWIN_DASH.get(label, "solid")},
            }
        )
    return data


def loss_figure(history, revision=0, max_points: int = 300) -> dict:
    return _figure(
        _curves(history, "loss", "training", max_points),
        _layout("Loss", "cross-entropy", revision, _events(history)),
    )


def accuracy_figure(history, revision=0, max_points: int = 300) -> dict:
    return _figure(
        _curves(history, "acc", "batch", max_points),
        _layout(
            "Accuracy",
            "fraction correct",
            revision,
            _events(history),
            yaxis={"title": {"text": "fraction correct"}, "range": [0, 1.02]},
        ),
    )


def positive(v: float) -> float | None:
    """A gradient norm for a log axis: 0 (a switched-off projection gets no gradient) becomes a gap, not -inf."""
    return v if v > 0 else None


def grad_norm_figure(history, revision=0, max_points: int = 200) -> dict:
    """One line per conv/linear layer: the L2 norm of its weight gradient over steps, log scale."""
    data, names = [], []
    for label, h in _runs(history).items():
        steps = thin_on_grid(h.steps, max_points)
        names = list(steps[-1]["grad_norm"]) if steps else []
        colours = layer_colours(names)
        for name in names:
            data.append(
                {
                    "type": "scatter",
                    "mode": _line_mode(steps),
                    "name": f"{name} ({label})" if label else name,
                    "x": [r["step"] for r in steps],
                    "y": [positive(r["grad_norm"][name]) for r in steps],
                    "line": {"color": colours[name], "width": 1.5, "dash": TWIN_DASH.get(label, "solid")},
                }
            )
    # a legend of 57 layers (ResNet-56) would crowd out the plot: deep nets name their lines on hover only
    return _figure(
        data,
        _layout(
            "Gradient norm per layer (dark: near the input)",
            "‖∂loss/∂W‖",
            revision,
            _events(history),
            log=True,
            labels=False,
            showlegend=len(names) <= 12,
        ),
    )


def grad_heatmap_figure(history, revision=0, max_points: int = 150) -> dict:
    """Layers (input at the bottom) x steps, coloured by log10 of the gradient norm."""
    runs = _runs(history)
    label, h = next(iter(runs.items()))
    steps = thin_on_grid(h.steps, max_points)
    names = list(steps[-1]["grad_norm"]) if steps else []
    z = [[math.log10(r["grad_norm"][n]) if r["grad_norm"][n] > 0 else None for r in steps] for n in names]
    data = [
        {
            "type": "heatmap",
            "x": [r["step"] for r in steps],
            "y": names,
            "z": z,
            "colorscale": "Viridis",
            "colorbar": {"title": {"text": "log10 ‖g‖"}},
        }
    ]
    title = "Gradient norm heatmap" + (f" ({label})" if label else "")
    return _figure(
        data,
        # automargin: room for the axes' names beside and under the layers' (on a phone "step" sat on the ticks)
        _layout(
            title,
            "",
            revision,
            _events(history),
            labels=False,
            yaxis={"automargin": True},
            xaxis={"title": {"text": "step"}, "automargin": True},
        ),  # fmt: skip
    )


def _events(history) -> list[dict]:
    runs = _runs(history)
    return next(iter(runs.values())).events if runs else []


def live_figures(history, revision=0) -> dict:
    """Every live chart at once: {"loss", "accuracy", "grad_norm", "grad_heatmap"}."""
    return {
        "loss": loss_figure(history, revision),
        "accuracy": accuracy_figure(history, revision),
        "grad_norm": grad_norm_figure(history, revision),
        "grad_heatmap": grad_heatmap_figure(history, revision),
    }


STREAM_GROWTH = 4  # a stream's text may grow to this many times its base before a new base replaces it
STREAM_MAX = 256_000  # characters of one stream's text at most (per chart; server and browser hold it)


class FigureStream:
    """One streamed chart's value as a text that only grows while it can: gradio's diff of two consecutive values
    is then an append of the new line (it checks `new.startswith(old)`, at C speed), not a Python walk over every
    point of two figures that sends more than the whole figure when thinning shifts the points.

    Line 0 is a base figure's JSON; each later line a JSON patch against the figure so far,
    {"arrays": {trace: {property: edit}}, "traces": {trace: whole trace}, "layout": layout}, with trace indexes
    as keys and each part only when it has something: an array property's edit [keep, tail] keeps its first
    `keep` elements and appends `tail`; a table (a heatmap's z) whose row count is unchanged gets a list of
    edits, one per row. A trace whose other properties changed comes whole. A new base, a text that does not
    extend the last (gradio sends it whole, once), comes when the trace count changes or the text would pass
    STREAM_GROWTH times its base or STREAM_MAX, so a long Play's text, held by server and browser, stays bounded.
    A text of one line is a whole figure's JSON: a reader takes line 0 as the figure and applies the rest, so it
    reads a plain figure too (app.py's CHART_JS is that reader). Figures are {"data": [...], "layout": {...}}, not
    changed once passed."""

    def __init__(self):
        self.text = ""
        self.figure: dict | None = None  # what self.text decodes to
        self.limit = 0

    def update(self, figure: dict) -> str:
        """The value that shows `figure`: the last text plus a patch line while it fits, else a new base."""
        patch = _patch(self.figure, figure) if self.figure is not None else None
        line = to_json(patch) if patch else ""  # "": nothing changed, the same text, which gradio sends as no edit
        if patch is None or (line and len(self.text) + 1 + len(line) > self.limit):
            self.text = to_json(figure)
            self.limit = min(STREAM_MAX, STREAM_GROWTH * len(self.text))
        elif line:
            self.text += "\n" + line
        self.figure = figure
        return self.text


def _patch(old: dict, new: dict) -> dict | None:
    """FigureStream's patch that turns figure `old` into `new` ({} if they are equal); None if it can't (the trace
    count changed)."""
    if len(old["data"]) != len(new["data"]):
        return None
    arrays, traces = {}, {}
    for i, (a, b) in enumerate(zip(old["data"], new["data"])):
        edits = _trace_edits(a, b)
        if edits is None:
            traces[str(i)] = b
        elif edits:
            arrays[str(i)] = edits
    patch = {}
    if arrays:
        patch["arrays"] = arrays
    if traces:
        patch["traces"] = traces
    if new["layout"] != old["layout"]:
        patch["layout"] = new["layout"]
    return patch


def _trace_edits(old: dict, new: dict) -> dict | None:
    """{property: edit} for each changed array property of a trace; None if anything else changed."""
    if old.keys() != new.keys():
        return None
    edits = {}
    for key, value in new.items():
        if value == old[key]:
            continue
        if not (isinstance(value, list) and isinstance(old[key], list)):
            return None
        edits[key] = _edit(old[key], value)
    return edits


def _edit(old: list, new: list) -> list:
    """[keep, tail] that turns array `old` into `new`; for a table whose row count is unchanged, one per row."""
    if old and len(old) == len(new) and all(isinstance(r, list) for r in old) and all(isinstance(r, list) for r in new):
        return [_edit(a, b) for a, b in zip(old, new)]
    keep = _common_prefix(old, new)
    return [keep, new[keep:]]


def _common_prefix(old: list, new: list) -> int:
    """How many leading elements `old` and `new` share. A streamed chart's arrays were appended to (all shared) or
    also lost their newest point (all but one): two slice comparisons, at C speed; else a binary search, since
    equal prefixes of a length mean equal prefixes of every shorter length."""
    n = min(len(old), len(new))
    if old[:n] == new[:n]:
        return n
    if n and old[: n - 1] == new[: n - 1]:
        return n - 1
    same, differ = 0, n - 1  # old[:same] == new[:same], old[:differ] != new[:differ]
    while differ - same > 1:
        mid = (same + differ) // 2
        if old[:mid] == new[:mid]:
            same = mid
        else:
            differ = mid
    return same


def to_json(value) -> str:
    """Compact JSON. A non-finite float (an evaluation gone bad) becomes null, as gradio's orjson writes it: NaN
    or Infinity in the text would stop the browser's JSON.parse, and the chart with it."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), separators=(",", ":"), ensure_ascii=False)


def _finite(node):
    """`node` with each non-finite float as None."""
    if isinstance(node, float):
        return node if math.isfinite(node) else None
    if isinstance(node, dict):
        return {k: _finite(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_finite(v) for v in node]
    return node


def gradient_tensor_figure(grads: dict, layer: str, titles=("shortcut on", "shortcut off")) -> dict:
    """One layer's weight gradient as side-by-side heatmaps on one colour scale: rows are output channels,
    columns input channels x kernel positions (the notebook prints layer2.conv1's as numbers)."""
    mats = [g[layer].reshape(g[layer].shape[0], -1).tolist() for g in grads]
    bound = max((abs(v) for m in mats for row in m for v in row), default=1.0) or 1.0
    data = []
    for i, m in enumerate(mats, 1):
        data.append(
            {
                "type": "heatmap",
                "z": m,
                "zmin": -bound,
                "zmax": bound,
                "colorscale": "RdBu",
                "reversescale": True,
                "showscale": i == len(mats),
                "xaxis": f"x{i}",
                "yaxis": f"y{i}",
            }
        )
    layout = {
        "title": {"text": f"∂loss/∂W of {layer}", "font": {"size": 14}},
        "template": "plotly_white",
        "margin": {"l": 40, "r": 10, "t": 50, "b": 30},
        "annotations": [],
        "height": 360,
    }
    for i, title in enumerate(titles[: len(mats)], 1):
        width = 1 / len(mats)
        layout[f"xaxis{i}"] = {"domain": [(i - 1) * width + 0.02, i * width - 0.04], "title": {"text": "in x kernel"}}
        layout[f"yaxis{i}"] = {"anchor": f"x{i}", "autorange": "reversed", "title": {"text": "out channel"}}
        layout["annotations"].append(
            {
                "text": title,
                "x": (i - 0.5) * width,
                "y": 1.02,
                "xref": "paper",
                "yref": "paper",
                "showarrow": False,
                "yanchor": "bottom",
            }
        )
    return {"data": data, "layout": layout}


def grad_norm_bars_figure(runs: dict[str, dict[str, float]]) -> dict:
    """Per-layer gradient norms of one image, as grouped bars per run (e.g. shortcuts on / off), log scale."""
    data = [
        {"type": "bar", "name": label, "x": list(norms), "y": list(norms.values())} for label, norms in runs.items()
    ]
    layout = {
        "title": {"text": "Gradient norm per layer, input → output", "font": {"size": 14}},
        "barmode": "group",
        "yaxis": {**LOG_AXIS, "title": {"text": "‖∂loss/∂W‖"}},
        "template": "plotly_white",
        "height": 360,
        "margin": {"l": 55, "r": 10, "t": 50, "b": 80},
    }
    return _log_ticks({"data": data, "layout": layout})


def grad_ratio_figure(on: dict[str, float], off: dict[str, float]) -> dict:
    """Per layer, how many times larger its gradient norm is with the shortcuts off than on (log scale): a plain
    deep net's trouble, layer by layer. Layers with no gradient in one run (a projection, with shortcuts off) are
    left out."""
    figure = grad_norm_bars_figure({"off ÷ on": {n: off[n] / on[n] for n in on if on[n] > 0 and off.get(n, 0) > 0}})
    figure["data"][0].update(marker={"color": "#d62728"}, hovertemplate="%{x}: ×%{y:.3g}<extra></extra>")
    layout = figure["layout"]
    layout["title"]["text"] = "Shortcuts off ÷ on, per layer, input → output"
    layout["yaxis"]["title"]["text"] = "× the gradient norm"
    return figure


# --- twins: depth, gradient routes, lesions -------------------------------------------------------------------


def _twin_colour(label: str, k: int) -> str:
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]
    return TWIN_COLOURS.get(label, palette[k % len(palette)])


def depth_figure(twin_histories: dict, revision=0, window: int = 1) -> dict:
    """Each layer's gradient norm against its depth (stem = 1 ... fc), one line per net, log scale.

    `twin_histories`: {"residual": History, "plain": History} (any labels); `window` > 1 averages the norms of
    the newest `window` steps, which one noisy batch can't sway. A deep plain net's norms drift by orders of
    magnitude from one end to the other (with BN they tend to grow toward the input); a residual net's stay close."""
    from .twin import layer_depth_norms  # plain python; imported here: importing charts imports no torch

    data = []
    for k, (label, h) in enumerate(_runs(twin_histories).items()):
        recent = h.steps[-max(1, window) :]
        if not recent:
            continue
        rows = [layer_depth_norms(r) for r in recent]  # one list per step, same layers in the same order
        norms = [sum(row[i]["grad_norm"] for row in rows) / len(rows) for i in range(len(rows[0]))]
        steps = f"step {recent[-1]['step']}" if len(recent) == 1 else f"steps {recent[0]['step']}-{recent[-1]['step']}"
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": f"{label or 'net'} ({steps})",
                "x": [r["depth"] for r in rows[0]],
                "y": [positive(v) for v in norms],
                "text": [r["layer"] for r in rows[0]],
                "hovertemplate": "%{text}: %{y:.3g}<extra></extra>",
                "line": {"color": _twin_colour(label, k), "dash": TWIN_DASH.get(label, "solid")},
            }
        )
    return _figure(
        data,
        _layout(
            "Gradient norm vs depth",
            "‖∂loss/∂W‖",
            revision,
            log=True,
            xaxis={"title": {"text": "layer (1 = stem, input side)"}},
        ),
    )


def routes_figure(routes: list[dict], revision=0, max_points: int = 200) -> dict:
    """Per block, the gradient reaching its input through the shortcut (solid) and through the residual
    branch (dashed) over steps, log scale; `routes` as TwinSession.routes: [{"step", "blocks": [...]}]."""
    routes = thin_on_grid(routes, max_points)
    blocks = sorted({b["block"] for r in routes for b in r["blocks"]})
    colours = layer_colours([str(b) for b in blocks])
    data = []
    for b in blocks:
        points = [(r["step"], row) for r in routes for row in r["blocks"] if row["block"] == b]
        for route, dash in (("shortcut", "solid"), ("residual", "dash")):
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": f"block {b} via {route}",
                    "legendgroup": f"block {b}",
                    "x": [step for step, _ in points],
                    "y": [positive(row[route]) for _, row in points],
                    "marker": {"size": 4},
                    "line": {"color": colours[str(b)], "width": 1.5, "dash": dash},
                }
            )
    return _figure(
        data,
        # two lines: one was cut at both ends on a phone
        _layout("Gradient into each block:<br>shortcut vs residual branch", "‖∂loss/∂x‖ per route", revision, log=True),
    )


def lesion_figure(lesions: dict[str, list[dict]], revision=0) -> dict:
    """Held-out accuracy with one block bypassed, against that block, per net; each net's intact accuracy as a
    dashed line. `lesions`: {"residual": lesion_accuracies(...), "plain": ...} (the entry with block None is
    the intact net). Veit et al.: a residual net shrugs off most single lesions, a plain net does not."""
    data = []
    for k, (label, rows) in enumerate(lesions.items()):
        colour = _twin_colour(label, k)
        cut = [r for r in rows if r["block"] is not None]
        intact = [r["acc"] for r in rows if r["block"] is None]
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": f"{label}, one block bypassed",
                "x": [r["block"] for r in cut],
                "y": [r["acc"] for r in cut],
                "line": {"color": colour},
            }
        )
        if intact and cut:
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": f"{label}, intact",
                    "x": [cut[0]["block"], cut[-1]["block"]],
                    "y": intact * 2,
                    "line": {"color": colour, "dash": "dash", "width": 1},
                }
            )
    return {
        "data": data,
        "layout": _layout(
            "Lesions: one block bypassed at test time",
            "held-out accuracy",
            revision,
            xaxis={"title": {"text": "bypassed block"}, "dtick": 1},
            yaxis={"title": {"text": "held-out accuracy"}, "range": [0, 1.02]},
        ),
    }


def compare_figure(
    runs: dict,
    title: str,
    ytitle: str,
    field: str = "loss",
    evals: bool = False,
    window: int = 1,
    log: bool = False,
    max_points: int = 400,
) -> dict:
    """One line per run ({"20 layers, plain": History, ...}) of a step field (or, evals=True, a held-out one),
    averaged over the last `window` records; runs named "<group>, <net>" share a colour per group, plain dotted."""
    groups = list(dict.fromkeys(label.split(",")[0] for label in runs))
    data = []
    for label, h in runs.items():
        records = h.evals if evals else h.steps
        values = [r[field] for r in records]
        smooth = [
            sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
            for i in range(len(values))
        ]
        keep = thin(list(zip([r["step"] for r in records], smooth)), max_points)
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers" if evals else "lines",
                "name": label,
                "x": [s for s, _ in keep],
                "y": [v for _, v in keep],
                "line": {
                    "color": _twin_colour("", groups.index(label.split(",")[0]) + 2),
                    "dash": "dot" if "plain" in label else "solid",
                },
            }
        )
    return _log_ticks({"data": data, "layout": _layout(title, ytitle, 0, log=log)})


def before_after_figure(readout: dict, revision=0) -> dict:
    """A shortcut switch's before/after readout (guided.before_after) as paired bars per layer: the mean gradient
    norm over the k steps before and the k after, log scale, each pair's ratio on hover; the loss's in the title.
    A 20% change reads as a step between two bars, a factor of 10 as a whole decade."""
    layers = list(readout["grad_norm"])
    k, loss = readout["k"], readout["loss"]
    data = [
        {
            "type": "bar",
            "name": f"{when} ({k} steps)",
            "x": layers,
            "y": [positive(readout["grad_norm"][n][when]) for n in layers],
            "customdata": [readout["grad_norm"][n]["ratio"] for n in layers],
            "hovertemplate": "%{x}: %{y:.3g} (after/before ×%{customdata:.2f})<extra></extra>",
            "marker": {"color": colour},
        }
        for when, colour in (("before", "#1f77b4"), ("after", "#d62728"))
    ]
    title = f"Switch at step {readout['step']}: loss {loss['before']:.2f} → {loss['after']:.2f}"
    layout = _layout(title, "‖∂loss/∂W‖", revision, log=True, barmode="group")
    layout["xaxis"] = {"title": {"text": "layer, input → output", "standoff": 12}, "tickangle": -45, "automargin": True}
    return _log_ticks({"data": data, "layout": layout})


SWITCH_TEXT = "Train, switch a shortcut,<br>train on: bars compare each<br>layer before and after it"  # fits a phone


def switch_placeholder(revision=0) -> dict:
    """The before/after chart before there is a switch with training on both sides of it."""
    layout = _layout("Before and after your latest shortcut switch", "‖∂loss/∂W‖", revision, log=True)
    return with_hint(_figure([], layout), SWITCH_TEXT)


def with_hint(empty: dict, text: str) -> dict:
    """An empty chart saying `text` where it says how to start."""
    empty["layout"]["annotations"] = [{**empty["layout"]["annotations"][0], "text": text}]
    return empty


# --- the same charts in Chinese ----------------------------------------------------------------------------------
# Whole strings, then the words inside composed ones (trace names, markers); layer names (stem, block1.conv1, fc)
# and network names stay as they are, as in the notebook.
ZH_WHOLE = {
    "Loss": "损失",
    "Accuracy": "准确率",
    "cross-entropy": "交叉熵",
    "fraction correct": "正确比例",
    "step": "步数",
    "Gradient norm per layer (dark: near the input)": "每层的梯度范数（深色：靠近输入）",
    "Gradient norm heatmap": "梯度范数热图",
    "log10 ‖g‖": "log10 ‖梯度‖",
    "in x kernel": "输入通道 × 卷积核位置",
    "out channel": "输出通道",
    "Gradient norm per layer, input → output": "每层的梯度范数，从输入到输出",
    "Gradient norm vs depth": "梯度范数与深度",
    "layer (1 = stem, input side)": "层（1 = stem，输入端）",
    "Gradient into each block:<br>shortcut vs residual branch": "流入每个残差块的梯度：<br>残差连接与残差分支",
    "‖∂loss/∂x‖ per route": "每条路径的 ‖∂loss/∂x‖",
    "Lesions: one block bypassed at test time": "损伤实验：测试时绕过一个残差块",
    "bypassed block": "被绕过的残差块",
    "held-out accuracy": "留出集准确率",
    "layer, input → output": "层，从输入到输出",
    EMPTY_TEXT: "按“▶ 播放”或一个“步”按钮开始",
    SWITCH_TEXT: "先训练，再开关一个残差连接，<br>继续训练：柱状图比较每一层<br>在切换前后的梯度",
    "Before and after your latest shortcut switch": "你最近一次开关残差连接的前后对比",
    "rejected": "被拒绝",
    "Shortcuts off ÷ on, per layer, input → output": "每层：残差连接关闭时的梯度 ÷ 开启时，从输入到输出",
    "× the gradient norm": "梯度范数的倍数",
    "off ÷ on": "关闭 ÷ 开启",
}
ZH_PATTERNS = [  # (regex, Chinese) applied in order to composed strings
    (r"^∂loss/∂W of (.+)$", r"\1 的 ∂loss/∂W"),
    (r"^Switch at step (\d+): loss", r"第 \1 步切换：损失"),
    (r"\bbefore \((\d+) steps\)", r"之前（\1 步）"),
    (r"\bafter \((\d+) steps\)", r"之后（\1 步）"),
    (r"\bsteps (\d+)-(\d+)", r"第 \1–\2 步"),
    (r"\bstep (\d+)", r"第 \1 步"),
    (r"one block bypassed", "绕过一个残差块"),
    (r"shortcut on", "残差连接开启"),
    (r"shortcut off", "残差连接关闭"),
    (r"\bon: all$", "开：全部"),
    (r"\boff: all$", "关：全部"),
    (r"\bon: b(\d+)$", r"开：残差块 \1"),
    (r"\boff: b(\d+)$", r"关：残差块 \1"),
    (r"held-out", "留出集"),
    (r"\btraining\b", "训练"),
    (r"\bbatch\b", "批"),
    (r" via shortcut", " 经残差连接"),  # before "residual" alone: the branch, not the network
    (r" via residual", " 经残差分支"),
    (r"\bresidual\b", "残差网络"),
    (r"\bplain\b", "普通网络"),
    (r"\bintact\b", "完好"),
    (r"\bblock (\d+)", r"残差块 \1"),
    (r"\bnet\b", "网络"),
]


def translate(figure: dict, lang: str) -> dict:
    """`figure` with its titles, axis titles, legend names and markers in `lang` ("en": unchanged; "zh")."""
    if lang != "zh":
        return figure

    def text(s: str) -> str:
        if s in ZH_WHOLE:
            return ZH_WHOLE[s]
        for pattern, zh in ZH_PATTERNS:
            s = re.sub(pattern, zh, s)
        return s

    def walk(node, key=None):
        if isinstance(node, dict):
            return {k: walk(v, k) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, key) for v in node] if key in ("annotations", "data", "shapes") else node
        if isinstance(node, str) and key in ("text", "name", "hovertext"):
            return text(node)
        return node

    return walk(figure)
