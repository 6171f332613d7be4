"""The degradation experiment, headless: plain and residual twins at two depths, same data, same budget, one report.

He et al. (2016), Fig. 1: a deeper plain net ends with a *higher training* loss than a shallower one, so the
trouble is optimisation, not overfitting; with shortcuts the deeper net trains at least as well. Each depth is a
TwinSession (same initial weights, same batches), so the only difference between the nets of a depth is the "+ x".

    python -m resnet.experiment --out DIR [--quick]    # DIR/report.html, DIR/history.csv, DIR/summary.json

Also the app's guided experiments (resnet.guided), each run from scratch and its claim checked, as a table:

    python -m resnet.experiment --guided [--fast] [--only ID ...] [--record assets/recorded]
"""

import argparse
import csv
import json
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

NETS = ("residual", "plain")  # shortcuts on, off


@dataclass
class ExperimentConfig:
    depths: tuple[int, ...] = (20, 56)  # layers, 6n+2 (the paper's CIFAR nets: 20, 32, 44, 56, 110)
    steps: int = 1000  # training steps of every net: the same budget for all
    batch_size: int = 64  # images per step
    optimizer: str = "adam"  # "adam" or "sgd" (momentum 0.9)
    lr: float = 1e-3  # step size
    width: int = 16  # channels of the first stage (then 2x, 4x), as in the paper
    eval_every: int = 100  # steps between held-out evaluations and gradient-route measurements
    eval_size: int = 500  # held-out images per evaluation during training
    final_eval_size: int = 2000  # held-out images for the final accuracy (the shapes test split has 2000)
    lesion_size: int = 500  # held-out images per lesion (one evaluation per block and net)
    loss_tail: int = 100  # final training loss = mean batch loss of the last this many steps (one batch is noisy)
    seed: int = 0  # weights, batches and augmentation
    dataset: str = "shapes"  # a name in resnet.data.DATASETS
    device: str = "auto"  # as TrainConfig.device
    precision: str = "auto"  # as TrainConfig.precision

    def __post_init__(self):
        self.depths = tuple(int(d) for d in self.depths)
        bad = [d for d in self.depths if d < 8 or (d - 2) % 6]
        if bad or not self.depths:
            raise ValueError(f"depths must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, ...); got {self.depths}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1; got {self.steps}")


# --quick: 2 minutes on 2 shared CPU cores (--threads 1), dataset included. Adam at lr 1e-3, batch 64 (the app's
# defaults) shows the degradation within 100 steps: plain-56 has hardly left chance loss (2.30) while plain-20
# and residual-56 are well below it. (SGD at the paper's lr 0.1, without its warm-up, trains neither 56-layer net
# here.) The default above is the README figure's run: 80 s on an H100, some 20 minutes (estimated) on 2 CPU cores.
QUICK = ExperimentConfig(steps=100, eval_every=50, eval_size=200, final_eval_size=500, lesion_size=200, loss_tail=20)


def train_depth(config: ExperimentConfig, depth: int, bar=None):
    """A TwinSession at `depth` layers trained for config.steps twin steps; `bar` (tqdm) counts the steps."""
    from .model import cifar_config
    from .session import TrainConfig
    from .twin import TwinSession

    train = TrainConfig(
        dataset=config.dataset,
        optimizer=config.optimizer,
        lr=config.lr,
        batch_size=config.batch_size,
        eval_every=config.eval_every,
        eval_size=config.eval_size,
        seed=config.seed,
        device=config.device,
        precision=config.precision,
        history_points=max(2000, config.steps),
    )  # keep every step: the csv has them all
    twin = TwinSession(train, cifar_config((depth - 2) // 6, width=config.width))
    while twin.step_count < config.steps:
        chunk = min(10, config.steps - twin.step_count)
        reports = twin.step(chunk)
        if reports["residual"]["done"] == 0 and reports["plain"]["done"] == 0:
            raise ValueError(f"every step was rejected at {depth} layers: lower the learning rate")
        if bar is not None:
            for report in reports.values():
                for message in report["messages"]:
                    bar.write(message)
            last = {net: reports[net]["last"] for net in NETS}
            bar.set_postfix({net: f"{r['loss']:.3f}" for net, r in last.items() if r})
            bar.update(chunk)
    return twin


def measure(config: ExperimentConfig, depth: int, twin) -> dict:
    """What the report shows of one depth, as plain data."""
    out = {"depth": depth, "lesions": twin.lesions(config.lesion_size), "routes": twin.routes, "nets": {}}
    for net, session in twin.twins.items():
        held_out = session.evaluate(config.final_eval_size)
        tail = [r["loss"] for r in session.history.steps[-config.loss_tail :]]
        out["nets"][net] = {
            "depth": depth,
            "net": net,
            "shortcut": net == "residual",
            "steps": session.step_count,
            "train_loss": sum(tail) / len(tail),
            "held_out_loss": held_out["loss"],
            "held_out_acc": held_out["acc"],
            "parameters": session.summary()["parameters"],
        }
    return out


def degradation(results: list[dict]) -> dict:
    """The paper's two comparisons, on the final training loss: deepest vs shallowest plain, deepest plain vs
    deepest residual. Reported as found; nothing here is tuned to make them come out true."""
    loss = {(r["depth"], r["net"]): r["train_loss"] for r in results}
    deep, shallow = max(r["depth"] for r in results), min(r["depth"] for r in results)
    return {
        "deep_plain_above_shallow_plain": loss[deep, "plain"] > loss[shallow, "plain"],
        "deep_plain_above_deep_residual": loss[deep, "plain"] > loss[deep, "residual"],
        "deep": deep,
        "shallow": shallow,
    }


def run(config: ExperimentConfig, out: Path, progress: bool = True) -> dict:
    """Train, measure, and write out/report.html, out/history.csv, out/summary.json. Returns the summary."""
    from tqdm import tqdm  # comes with huggingface-hub

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    depths, histories = [], {}
    with tqdm(total=config.steps * len(config.depths), unit="step", file=sys.stderr, disable=not progress) as bar:
        for depth in config.depths:
            bar.set_description(f"{depth} layers, twins")
            twin = train_depth(config, depth, bar)
            bar.set_description(f"{depth} layers, lesions")
            depths.append(measure(config, depth, twin))
            histories[depth] = twin.histories
            device, precision = twin.residual.device, twin.residual.precision
    results = [d["nets"][net] for d in depths for net in NETS]
    summary = {
        "config": asdict(config),
        "device": str(device),
        "precision": precision,
        "seconds": round(time.perf_counter() - t0, 1),
        "results": results,
        "degradation": degradation(results),
        "lesions": {str(d["depth"]): d["lesions"] for d in depths},
    }
    write_history(out / "history.csv", histories)  # the numbers first: they outlive a failed report
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "report.html").write_text(report_html(summary, depths, histories), encoding="utf-8")
    return summary


def write_history(path: Path, histories: dict) -> None:
    """Long format, one row per record: depth, net, step, split (train: the step's batch; held_out), loss, acc."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["depth", "net", "step", "split", "loss", "acc"])
        for depth, twins in histories.items():
            for net, h in twins.items():
                w.writerows([depth, net, r["step"], "train", r["loss"], r["acc"]] for r in h.steps)
                w.writerows([depth, net, r["step"], "held_out", r["loss"], r["acc"]] for r in h.evals)


def table(results: list[dict]) -> str:
    lines = [f"{'layers':>6}  {'net':<8}  {'train loss':>10}  {'held-out acc':>12}  {'params':>8}"]
    lines += [
        f"{r['depth']:>6}  {r['net']:<8}  {r['train_loss']:>10.4f}  {r['held_out_acc']:>12.3f}  {r['parameters']:>8,}"
        for r in results
    ]
    return "\n".join(lines)


def report_html(summary: dict, depths: list[dict], histories: dict) -> str:
    """One self-contained page: plotly.js inline once, then every figure; opens offline."""
    import html

    import plotly.io as pio

    from .charts import compare_figure, depth_figure, lesion_figure, loss_figure, routes_figure

    c = summary["config"]
    runs = {f"{depth} layers, {net}": h for depth, twins in histories.items() for net, h in twins.items()}
    sections = [
        (
            "Training loss (mean of the last 20 batches)",
            "In He et al.'s Fig. 1 the deeper plain net (dotted) "
            "trains worse than the shallower one, and with shortcuts (solid) the deeper net trains at least as well. "
            "The verdict above says what this run found.",
            compare_figure(runs, "Training loss", "cross-entropy", window=20),
        ),
        (
            "Held-out accuracy",
            "",
            compare_figure(runs, "Held-out accuracy", "fraction correct", field="acc", evals=True),
        ),
    ]
    for d in depths:
        n = d["depth"]
        sections += [
            (
                f"{n} layers: both twins' losses",
                "Same initial weights, same batches: only the shortcuts differ.",
                loss_figure(histories[n]),
            ),
            (
                f"{n} layers: gradient norm vs depth",
                "Each conv/linear layer's weight-gradient norm at the end of "
                "training (mean of the last 20 steps: one batch is noisy), input on the left.",
                depth_figure(histories[n], window=20),
            ),
            (
                f"{n} layers: gradient routes into each block (residual twin)",
                "How much of dL/dx reaches each "
                "block's input straight through the shortcut (the '+1' in d(x + F(x))/dx) and how much through the "
                "residual branch F, on a fixed batch.",
                routes_figure(d["routes"]),
            ),
            (
                f"{n} layers: lesions",
                "Held-out accuracy with one block bypassed at test time (Veit et al. 2016): "
                "its residual branch dropped, the weights unchanged.",
                lesion_figure(d["lesions"]),
            ),
        ]
    verdict = summary["degradation"]
    rows = "".join(
        f"<tr><td>{r['depth']}</td><td>{r['net']}</td><td>{r['train_loss']:.4f}</td>"
        f"<td>{r['held_out_acc']:.3f}</td><td>{r['parameters']:,}</td></tr>"
        for r in summary["results"]
    )
    parts = [
        f"<h1>Plain vs residual at depth {', '.join(str(d) for d in c['depths'])}</h1>",
        f"<p>{c['steps']} steps of batch {c['batch_size']} ({c['optimizer']}, lr {c['lr']:g}) on "
        f"{html.escape(c['dataset'])}, seed {c['seed']}; {summary['device']}, {summary['precision']}, "
        f"{summary['seconds']:.0f} s.</p>",
        "<table><tr><th>layers</th><th>net</th><th>final training loss</th><th>held-out accuracy</th>"
        f"<th>parameters</th></tr>{rows}</table>",
        f"<p>Deepest plain net's training loss above the shallowest plain net's: "
        f"<b>{verdict['deep_plain_above_shallow_plain']}</b>; above the deepest residual net's: "
        f"<b>{verdict['deep_plain_above_deep_residual']}</b>.</p>",
    ]
    for i, (title, text, fig) in enumerate(sections):
        parts.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(text)}</p>")
        # plotly.js (about 4 MB) once, with the first figure; the others use it
        parts.append(pio.to_html(fig, include_plotlyjs=i == 0, full_html=False, default_height=420))
    style = (
        "body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ResNet Playground: degradation</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )


def run_guided(ids: list[str], fast: bool, record: Path | None, command: str, progress: bool = True) -> list[dict]:
    """Run guided experiments headless, one after another; with `record`, write record/ID.json for each (its
    curves, effect, command and machine). Returns one row per experiment: {"experiment", "network", "steps",
    "seconds", "effect"}."""
    from tqdm import tqdm

    from . import guided

    rows = []
    for i in ids:
        setup = guided.get(i).fast if fast else guided.get(i).full
        t0 = time.perf_counter()
        with tqdm(total=setup.steps, desc=i, unit="step", file=sys.stderr, disable=not progress) as bar:
            run = guided.GuidedRun(i, fast).finish(lambda report: bar.update(report["steps"] - bar.n))
        seconds = round(time.perf_counter() - t0, 1)
        effect = guided.effect(i, run)
        if record is not None:
            record.mkdir(parents=True, exist_ok=True)
            data = guided.recording(run, effect, command, seconds)
            (record / f"{i}.json").write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")))
        rows.append({"experiment": i, "network": setup.network, "steps": setup.steps, "seconds": seconds, **effect})
    return rows


def guided_table(rows: list[dict]) -> str:
    """The effect sizes, one experiment a line, then each readout."""
    lines = [
        f"{'experiment':<18}  {'network':<9}  {'steps':>5}  {'s':>5}  {'headline':<12}  {'value':>8}  check  holds"
    ]
    for r in rows:
        c = r["checks"][0]
        lines.append(
            f"{r['experiment']:<18}  {r['network']:<9}  {r['steps']:>5}  {r['seconds']:>5.0f}  {c['what']:<12}  "
            f"{c['value']:>8.3g}  {c['op']} {c['threshold']:<3g}  {r['holds']}"
        )
    return "\n".join(lines + [f"{r['experiment']}: {r['readout']['en']}" for r in rows])


def main(argv=None) -> dict | list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m resnet.experiment", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="directory for report.html, history.csv, summary.json")
    p.add_argument("--guided", action="store_true", help="run the app's guided experiments and print their effects")
    p.add_argument("--fast", action="store_true", help="with --guided: the tests' fast settings, not the full ones")
    p.add_argument("--only", nargs="+", metavar="ID", help="with --guided: only these experiments")
    p.add_argument("--record", type=Path, metavar="DIR", help="with --guided: write DIR/ID.json for each run")
    p.add_argument("--quick", action="store_true", help="a small run: under 4 minutes on 2 CPU cores")
    for f in fields(ExperimentConfig):  # every setting can be overridden: --steps 300 --depths 20 56 ...
        kind, flag = type(f.default), f"--{f.name.replace('_', '-')}"
        defaults = f"default {f.default}, with --quick {getattr(QUICK, f.name)}"
        if kind is tuple:
            p.add_argument(flag, type=int, nargs="+", help=f"{defaults} (layers, 6n+2)")
        else:
            p.add_argument(flag, type=kind, help=defaults)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: one per core); on a busy shared machine 1 can "
        "be many times faster, as threads that wait for each other wait for the other programs too",
    )
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.guided:
        from . import guided

        ids = args.only or list(guided.EXPERIMENTS)
        unknown = [i for i in ids if i not in guided.EXPERIMENTS]
        if unknown:
            sys.exit(f"error: unknown experiment {unknown}; choose from {list(guided.EXPERIMENTS)}")
        command = " ".join(["python -m resnet.experiment", *argv])
        rows = run_guided(ids, args.fast, args.record, command, progress=not args.no_progress)
        print(guided_table(rows))
        return rows
    if args.out is None:
        p.error("--out is required (or --guided)")
    base = QUICK if args.quick else ExperimentConfig()
    changes = {f.name: getattr(args, f.name) for f in fields(ExperimentConfig) if getattr(args, f.name) is not None}
    try:
        config = replace(base, **changes)
        summary = run(config, args.out, progress=not args.no_progress)
    except ValueError as e:  # a bad setting or dataset name: a message, not a traceback
        sys.exit(f"error: {e}")
    print(table(summary["results"]))
    v = summary["degradation"]
    print(
        f"deep ({v['deep']}) plain above shallow ({v['shallow']}) plain: {v['deep_plain_above_shallow_plain']}; "
        f"above deep residual: {v['deep_plain_above_deep_residual']}  ({summary['seconds']:.0f} s, "
        f"{summary['device']}); report: {args.out / 'report.html'}"
    )
    return summary


if __name__ == "__main__":
    main()
