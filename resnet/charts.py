"""Plotly figures, as plain JSON-ready dicts, from a session's history.

Dicts rather than `go.Figure`s because the app streams them a few times a second to a chart that calls
`Plotly.react`: building a dict is cheap and what is sent stays bounded (`max_points` per series, however long
the run). Layers are coloured by depth (dark = near the input), so vanishing gradients read as a colour order.
"""

import math

from plotly.colors import sample_colorscale

EVENT_COLOURS = {"shortcut": "#d62728", "lr": "#7f7f7f", "optimizer": "#7f7f7f", "batch": "#7f7f7f",
                 "rejected": "#ff7f0e", "teach": "#2ca02c"}
TWIN_DASH = {"residual": "solid", "plain": "dot"}


def thin(records: list[dict], max_points: int) -> list[dict]:
    """At most max_points records, evenly spaced, always ending with the newest."""
    stride = max(1, math.ceil(len(records) / max_points))
    return records[::-1][::stride][::-1]


def layer_colours(names: list[str]) -> dict[str, str]:
    return dict(zip(names, sample_colorscale("Viridis", [i / max(len(names) - 1, 1) for i in range(len(names))])))


def _layout(title: str, ytitle: str, revision, events=(), log=False, **extra) -> dict:
    shapes, annotations = [], []
    for e in events[-30:]:  # the newest few, so a long run's markers don't bury the lines
        colour = EVENT_COLOURS.get(e["kind"], "#7f7f7f")
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": e["step"], "x1": e["step"], "y0": 0,
                       "y1": 1, "line": {"color": colour, "width": 1, "dash": "dash"}})
        if e["kind"] == "shortcut":
            annotations.append({"x": e["step"], "y": 1, "xref": "x", "yref": "paper", "text": e["text"],
                                "showarrow": False, "textangle": -90, "xanchor": "right", "yanchor": "top",
                                "font": {"size": 10, "color": colour}})
    layout = {"title": {"text": title, "font": {"size": 14}}, "uirevision": revision,
              "margin": {"l": 55, "r": 10, "t": 35, "b": 35}, "xaxis": {"title": {"text": "step"}},
              "yaxis": {"title": {"text": ytitle}, "type": "log" if log else "linear"},
              "legend": {"font": {"size": 10}}, "shapes": shapes, "annotations": annotations,
              "template": "plotly_white"}
    layout.update(extra)
    return layout


def _runs(history) -> dict:
    """A history, or {"residual": history, "plain": history} for twins -> {label: history}."""
    return history if isinstance(history, dict) else {"": history}


def loss_figure(history, revision=0, max_points: int = 300) -> dict:
    data = []
    for label, h in _runs(history).items():
        steps = thin(h.steps, max_points)
        dash, name = TWIN_DASH.get(label, "solid"), f" ({label})" if label else ""
        data.append({"type": "scatter", "mode": "lines", "name": f"training{name}", "x": [r["step"] for r in steps],
                     "y": [r["loss"] for r in steps], "line": {"color": "#1f77b4", "dash": dash}})
        evals = thin(h.evals, max_points)
        data.append({"type": "scatter", "mode": "lines+markers", "name": f"held-out{name}",
                     "x": [r["step"] for r in evals], "y": [r["loss"] for r in evals],
                     "line": {"color": "#ff7f0e", "dash": dash}})
    return {"data": data, "layout": _layout("Loss", "cross-entropy", revision, _events(history))}


def accuracy_figure(history, revision=0, max_points: int = 300) -> dict:
    data = []
    for label, h in _runs(history).items():
        steps = thin(h.steps, max_points)
        dash, name = TWIN_DASH.get(label, "solid"), f" ({label})" if label else ""
        data.append({"type": "scatter", "mode": "lines", "name": f"batch{name}", "x": [r["step"] for r in steps],
                     "y": [r["acc"] for r in steps], "line": {"color": "#1f77b4", "dash": dash}})
        evals = thin(h.evals, max_points)
        data.append({"type": "scatter", "mode": "lines+markers", "name": f"held-out{name}",
                     "x": [r["step"] for r in evals], "y": [r["acc"] for r in evals],
                     "line": {"color": "#ff7f0e", "dash": dash}})
    return {"data": data, "layout": _layout("Accuracy", "fraction correct", revision, _events(history),
                                            yaxis={"title": {"text": "fraction correct"}, "range": [0, 1.02]})}


def grad_norm_figure(history, revision=0, max_points: int = 200) -> dict:
    """One line per conv/linear layer: the L2 norm of its weight gradient over steps, log scale."""
    data = []
    for label, h in _runs(history).items():
        steps = thin(h.steps, max_points)
        names = list(steps[-1]["grad_norm"]) if steps else []
        colours = layer_colours(names)
        for name in names:
            data.append({"type": "scatter", "mode": "lines", "name": f"{name} ({label})" if label else name,
                         "x": [r["step"] for r in steps], "y": [r["grad_norm"][name] for r in steps],
                         "line": {"color": colours[name], "width": 1.5, "dash": TWIN_DASH.get(label, "solid")}})
    return {"data": data, "layout": _layout("Gradient norm per layer", "‖∂loss/∂W‖", revision, _events(history),
                                            log=True)}


def grad_heatmap_figure(history, revision=0, max_points: int = 150) -> dict:
    """Layers (input at the bottom) x steps, coloured by log10 of the gradient norm."""
    runs = _runs(history)
    label, h = next(iter(runs.items()))
    steps = thin(h.steps, max_points)
    names = list(steps[-1]["grad_norm"]) if steps else []
    z = [[math.log10(max(r["grad_norm"][n], 1e-12)) for r in steps] for n in names]
    data = [{"type": "heatmap", "x": [r["step"] for r in steps], "y": names, "z": z, "colorscale": "Viridis",
             "colorbar": {"title": {"text": "log10 ‖g‖"}}}]
    title = "Gradient norm heatmap" + (f" ({label})" if label else "")
    return {"data": data, "layout": _layout(title, "", revision, _events(history), yaxis={"automargin": True})}


def _events(history) -> list[dict]:
    runs = _runs(history)
    return next(iter(runs.values())).events if runs else []


def live_figures(history, revision=0) -> dict:
    """Every live chart at once: {"loss", "accuracy", "grad_norm", "grad_heatmap"}."""
    return {"loss": loss_figure(history, revision), "accuracy": accuracy_figure(history, revision),
            "grad_norm": grad_norm_figure(history, revision), "grad_heatmap": grad_heatmap_figure(history, revision)}


def gradient_tensor_figure(grads: dict, layer: str, titles=("shortcut on", "shortcut off")) -> dict:
    """One layer's weight gradient as side-by-side heatmaps on one colour scale: rows are output channels,
    columns input channels x kernel positions (the notebook prints layer2.conv1's as numbers)."""
    mats = [g[layer].reshape(g[layer].shape[0], -1).tolist() for g in grads]
    bound = max((abs(v) for m in mats for row in m for v in row), default=1.0) or 1.0
    data = []
    for i, m in enumerate(mats, 1):
        data.append({"type": "heatmap", "z": m, "zmin": -bound, "zmax": bound, "colorscale": "RdBu",
                     "reversescale": True, "showscale": i == len(mats), "xaxis": f"x{i}", "yaxis": f"y{i}"})
    layout = {"title": {"text": f"∂loss/∂W of {layer}", "font": {"size": 14}}, "template": "plotly_white",
              "margin": {"l": 40, "r": 10, "t": 50, "b": 30}, "annotations": [], "height": 360}
    for i, title in enumerate(titles[: len(mats)], 1):
        width = 1 / len(mats)
        layout[f"xaxis{i}"] = {"domain": [(i - 1) * width + 0.02, i * width - 0.04], "title": {"text": "in x kernel"}}
        layout[f"yaxis{i}"] = {"anchor": f"x{i}", "autorange": "reversed", "title": {"text": "out channel"}}
        layout["annotations"].append({"text": title, "x": (i - 0.5) * width, "y": 1.02, "xref": "paper",
                                      "yref": "paper", "showarrow": False, "yanchor": "bottom"})
    return {"data": data, "layout": layout}


def grad_norm_bars_figure(runs: dict[str, dict[str, float]]) -> dict:
    """Per-layer gradient norms of one image, as grouped bars per run (e.g. shortcuts on / off), log scale."""
    data = [{"type": "bar", "name": label, "x": list(norms), "y": list(norms.values())}
            for label, norms in runs.items()]
    layout = {"title": {"text": "Gradient norm per layer, input → output", "font": {"size": 14}}, "barmode": "group",
              "yaxis": {"type": "log", "title": {"text": "‖∂loss/∂W‖"}}, "template": "plotly_white", "height": 360,
              "margin": {"l": 55, "r": 10, "t": 50, "b": 80}}
    return {"data": data, "layout": layout}
