"""Training speed on one device: `python -m resnet.bench [--quick]`; a room of learners: `--room --sessions N`.

The notebook's loop (fp32, NCHW, eager Adam, randint batches, no augmentation), the session's `step()` with telemetry
on and off (one session, the flag flipped between turns), and the ceiling (the model's conv and linear layers alone,
forward and backward) take turns over many rounds; each figure is the median round, printed with its spread, as a
busy neighbour on 2 shared cores slows whichever loop is running. Last line: one JSON object.
"""

import argparse
import json
import platform
import statistics
import threading
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import graphstep
from .data import load_dataset, normalize
from .notebook import NotebookResNet
from .pool import GPU_TURN_STEPS, for_device
from .session import Session, TrainConfig

BENCH_DIR = Path(__file__).resolve().parent.parent / "assets" / "bench"  # where a bare --out name is written
APP_THINK_SECONDS = 3.0  # a workshop's learner between two actions, on average (the load test's --think)


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(run, steps: int, device) -> float:
    """Seconds for `run(steps)`, a loop's `steps` steps, from an idle device to an idle device."""
    sync(device)
    t = time.perf_counter()
    run(steps)
    sync(device)
    return time.perf_counter() - t


def each(step):
    """A loop of one-step calls: run(n) calls step() n times."""
    return lambda n: [step() for _ in range(n)]


def in_turns(session, n: int, batch=None):
    """n steps of a session as Play takes them on a GPU: turns of GPU_TURN_STEPS launched back to back, each read
    once at its end (on a CPU each step is read at once whatever the turn). `batch`: as Session.step's."""
    for start in range(0, n, GPU_TURN_STEPS):
        session.step(min(GPU_TURN_STEPS, n - start), batch=batch)


def interleaved(loops: dict, steps: int, rounds: int, device, warmup: int = 3) -> tuple[dict, dict]:
    """Seconds per round for each loop (`run(n)` takes n steps), `steps` steps a round, and each loop's warm-up
    seconds. The loops take turns within a round, in reverse order every other round, so a slow spell of the machine
    (or a drift) falls on all of them alike."""
    # warm-up: allocator, oneDNN kernel choice, cuDNN autotune, torch.compile
    warm = {name: measure(step, warmup, device) for name, step in loops.items()}
    times = {name: [] for name in loops}
    for r in range(rounds):
        for name in list(loops)[:: -1 if r % 2 else 1]:
            times[name].append(measure(loops[name], steps, device))
    return times, warm


def spread(values: list[float]) -> dict:
    """Median and half the min-max range: the figure and how much it moved from round to round."""
    return {"median": statistics.median(values), "spread": (max(values) - min(values)) / 2}


def notebook_loop(data, device, batch: int):
    """The notebook's training step, as written there, fed the same uint8 tensors the session uses."""
    torch.manual_seed(0)
    model = NotebookResNet(num_classes=len(data.classes)).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    g = torch.Generator(device).manual_seed(0)

    def step():
        idx = torch.randint(len(data.train_y), (batch,), device=device, generator=g)
        output = model(normalize(data.train_x[idx]))
        optimizer.zero_grad()
        loss = criterion(output, data.train_y[idx])
        loss.backward()
        optimizer.step()
        loss.item()  # the notebook prints the loss each step: a host sync

    return each(step)


def session_loops(session: Session) -> tuple:
    """(a step with telemetry, a step without): of the one session, the same weights, data and memory, when it steps
    eagerly; of two alike when its steps are captured (a capture is specific to telemetry on or off: flipping the
    flag every few steps would time captures)."""
    bare = session
    if session.step_mode != "eager":
        bare = Session(replace(session.config, telemetry=False), session.model_config)

    def run(s: Session, telemetry: bool, n: int):
        if s.config.telemetry != telemetry:
            s.config = replace(s.config, telemetry=telemetry)
        in_turns(s, n)

    return partial(run, session, True), partial(run, bare, False)


def ceiling_loop(session: Session) -> tuple:
    """The most img/s this device could train the session's model at: a step of its conv and linear layers alone,
    forward and backward (input and weight gradients), one after another at the session's batch, precision and
    memory format. BN, ReLU, the loss and the optimizer only add time. Timed, not assumed: on a CPU without
    AVX-512 the backward convolutions run well below the forward's speed. Returns (step, {"gflop_per_image": the
    forward's, "train_gflop_per_image": forward and backward})."""
    shapes = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o: shapes.__setitem__(m, i[0].shape)) for m in session.layers.values()
    ]
    x, _ = session.next_batch()  # (B, 3, 32, 32)
    with torch.no_grad():
        session.model(x)
    for h in hooks:
        h.remove()
    forward_flops, train_flops, layers = 0, 0, []
    for i, (m, in_shape) in enumerate(shapes.items()):
        inp = torch.randn(in_shape, device=session.device)
        weight = m.weight.detach().clone().requires_grad_()
        if isinstance(m, nn.Conv2d):
            inp = inp.contiguous(memory_format=session.memory_format)
            run = partial(
                F.conv2d,
                weight=weight,
                bias=None,
                stride=m.stride,
                padding=m.padding,
                dilation=m.dilation,
                groups=m.groups,
            )
        else:
            run = partial(F.linear, weight=weight, bias=m.bias.detach())
        inp.requires_grad_(i > 0)  # the images need no gradient; every later layer's input does
        with session._autocast():
            out = run(inp)
        # each output element: c_in/groups * kh * kw (or in_features) multiply-adds
        flops = 2 * out.numel() * weight[0].numel()
        forward_flops += flops
        train_flops += flops * (3 if i > 0 else 2)  # + weight gradient, + input gradient
        layers.append((run, inp, torch.randn_like(out), [inp, weight] if i > 0 else [weight]))

    def step():
        for run, inp, grad, leaves in layers:
            with session._autocast():
                out = run(inp)
            torch.autograd.grad(out, leaves, grad)  # returned, not accumulated into .grad: no extra add

    batch = x.shape[0]
    return each(step), {
        "gflop_per_image": forward_flops / batch / 1e9,
        "train_gflop_per_image": train_flops / batch / 1e9,
    }


def speed(loops: dict, batch: int, steps: int, rounds: int, device) -> dict:
    """Run `loops` (names -> a step; "notebook", "engine", "engine_no_telemetry" and "ceiling" among them)
    interleaved. Returns per loop img/s (median round, and [min, max]), and the paired figures, each from the
    same rounds: telemetry's overhead and the engine's speed as a fraction of the ceiling, with their spreads."""
    times, warm = interleaved(loops, steps, rounds, device)
    img_s = {name: [steps * batch / t for t in ts] for name, ts in times.items()}
    overhead = spread([1 - bare / tel for bare, tel in zip(times["engine_no_telemetry"], times["engine"])])
    of_ceiling = spread([c / e for c, e in zip(times["ceiling"], times["engine"])])
    best = {name: min(ts) for name, ts in times.items()}  # each loop's least disturbed round
    return {
        "img_s": {name: statistics.median(v) for name, v in img_s.items()},
        "range": {name: [min(v), max(v)] for name, v in img_s.items()},
        "telemetry_overhead": overhead["median"],
        "telemetry_overhead_spread": overhead["spread"],
        "engine_vs_ceiling": of_ceiling["median"],
        "engine_vs_ceiling_spread": of_ceiling["spread"],
        # on a machine shared with busy neighbours the medians wander; the best rounds are what it does unhindered
        "telemetry_overhead_best": 1 - best["engine_no_telemetry"] / best["engine"],
        "engine_vs_ceiling_best": best["ceiling"] / best["engine"],
        "warmup_s": {name: round(t, 1) for name, t in warm.items()},
    }


def print_speed(figures: dict, header: str):
    img_s, ranges, base = figures["img_s"], figures["range"], figures["img_s"]["notebook"]
    print(header)
    print(f"{'loop':<30}{'img/s':>10}{'min':>10}{'max':>10}{'x notebook':>12}")
    for name, v in img_s.items():
        lo, hi = ranges[name]
        print(f"{name:<30}{v:>10.1f}{lo:>10.1f}{hi:>10.1f}{v / base:>12.2f}")
    print(
        f"telemetry overhead {figures['telemetry_overhead']:+.2%} ± {figures['telemetry_overhead_spread']:.2%}; "
        f"engine at {figures['engine_vs_ceiling']:.2f} ± {figures['engine_vs_ceiling_spread']:.2f} of the ceiling "
        "(median over rounds of each round's figure ± half its range)"
    )
    busy = figures["engine_vs_ceiling_spread"] > 0.25 * figures["engine_vs_ceiling"]
    print(
        ("the machine was busy (its rounds disagree): trust the best rounds over the medians; " if busy else "")
        + f"best rounds: telemetry overhead {figures['telemetry_overhead_best']:+.2%}, "
        f"engine at {figures['engine_vs_ceiling_best']:.2f} of the ceiling"
    )


def gpu_agreement(device, batch: int = 64) -> dict:
    """One training step of the same weights on the same batch: the device's bf16 session against a float64 CPU
    reference. Returns the largest relative differences of the loss and the per-layer gradient norms."""
    import copy

    session = Session(TrainConfig(batch_size=batch, device=str(device), eval_every=0, augment=False))
    reference = copy.deepcopy(session.model).to("cpu", torch.float64, memory_format=torch.contiguous_format)
    x, y = session.next_batch()
    record = session.train_step(x, y)
    loss = F.cross_entropy(reference(x.cpu().double()), y.cpu())
    loss.backward()
    grad_diff = max(
        abs(record["grad_norm"][n] - m.weight.grad.norm().item()) / m.weight.grad.norm().item()
        for n, m in reference.weighted_layers().items()
    )
    return {
        "loss_rel_diff": abs(record["loss"] - loss.item()) / loss.item(),
        "grad_norm_rel_diff": grad_diff,
        "precision": session.precision,
    }


def gpu_check(args) -> dict:
    """Every GPU measurement in one command (< 8 min on one card), its JSON written under assets/bench/: at batch 512
    the notebook loop, the session's step captured (telemetry on and off), eager and compiled, the twins and the
    ceiling; one learner at batch 64 (Play captured, Play eager, Step clicks); a room of 100 learners on the app's
    scheduler (captured on streams of their own, captured on one stream, eager); the app itself with 100 learners
    (tests/load_test.py), acting back to back and pausing as people do; the bf16-vs-float64 agreement. Smaller
    --batch/--steps/--rounds/--sessions/--seconds make a dry run of it on any device."""
    device = torch.device("cuda" if args.device == "auto" else args.device)
    batch, steps, rounds = args.batch or 512, args.steps or 20, args.rounds or 7
    learners, seconds = args.sessions or 100, args.seconds if args.seconds is not None else 20
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{device} (a dry run)"
    slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
    args.out = args.out or f"gpu_check_{slug}.json"  # written after each part: a run cut short keeps what it measured
    print(f"{name}, torch {torch.__version__}", flush=True)
    data = load_dataset("shapes", device)
    base = TrainConfig(batch_size=batch, device=str(device), eval_every=0)
    session = Session(base)
    loops = {"notebook": notebook_loop(data, device, batch)}
    loops["engine"], loops["engine_no_telemetry"] = session_loops(session)
    loops["engine_eager"], _ = session_loops(Session(replace(base, step_mode="eager")))
    loops["engine_compiled"], _ = session_loops(Session(replace(base, compile=True)))
    try:
        from .twin import TwinSession

        twin = TwinSession(base)
        loops["twin"] = twin.step
    except Exception as e:  # noqa: BLE001 -- the twin is optional here; say why it is missing
        print(f"twin not measured: {e}")
    loops["ceiling"], flops = ceiling_loop(session)
    figures = speed(loops, batch, steps, rounds, device)
    print_speed(figures, f"{name}, batch {batch}, {rounds} rounds x {steps} steps, step mode {session.step_mode}")
    print("warm-up seconds (3 steps, capture and compilation included): " + json.dumps(figures["warmup_s"]))

    one = one_learner(device, steps=max(steps * 5, 10), rounds=rounds)
    print(f"one learner, batch 64: Play {one['steps_s']} steps/s ({one['step_mode']}) against {one['eager_steps_s']} "
          f"eager: x{one['speedup']}; with batches copied in {one['batch_copied_steps_s']}; Step clicks "
          f"{one['click_steps_s']}/s", flush=True)  # fmt: skip
    rooms = {}
    for kind, changes in (("auto", {}), ("one_stream", {"own_stream": False}), ("eager", {"step_mode": "eager"})):
        r = rooms[kind] = room(learners, 64, seconds, str(device), **changes)
        print(f"room of {learners} ({r['step_mode']}, {'own streams' if r['own_streams'] else 'one stream'}, "
              f"{r['workers']} workers, turns of {r['turn_steps']}): {r['learner_steps_s']} learner-steps/s, "
              f"wait p50/p95 {r['wait_p50_ms']}/{r['wait_p95_ms']} ms", flush=True)  # fmt: skip
    agreement = gpu_agreement(device)
    print(
        f"bf16 on {name} vs float64 on CPU, one step: loss rel diff {agreement['loss_rel_diff']:.2e}, "
        f"largest grad-norm rel diff {agreement['grad_norm_rel_diff']:.2e}"
    )
    best = max(v for k, v in figures["img_s"].items() if k != "ceiling")
    result = {
        "device": name,
        "torch": torch.__version__,
        "batch": batch,
        "step_mode": session.step_mode,
        **{f"{k}_img_s": round(v) for k, v in figures["img_s"].items()},
        "telemetry_overhead": round(figures["telemetry_overhead"], 4),
        "telemetry_overhead_spread": round(figures["telemetry_overhead_spread"], 4),
        "engine_vs_ceiling": round(figures["engine_vs_ceiling"], 3),
        "engine_vs_ceiling_spread": round(figures["engine_vs_ceiling_spread"], 3),
        "telemetry_overhead_best": round(figures["telemetry_overhead_best"], 4),
        "engine_vs_ceiling_best": round(figures["engine_vs_ceiling_best"], 3),
        "layers_tflop_s": round(figures["img_s"]["ceiling"] * flops["train_gflop_per_image"] / 1e3, 1),
        "warmup_s": figures["warmup_s"],
        "tflops_engine_best": round(best * flops["train_gflop_per_image"] / 1e3, 1),
        "one_learner_b64": one,
        "room": rooms["auto"],
        "room_one_stream": rooms["one_stream"],
        "room_eager": rooms["eager"],
        **agreement,
    }
    # Through the app: learners who act the moment their last action returned (the stress the targets name),
    # then learners who pause 0-6 s between actions (3 s on average), as people in a workshop do
    rooms = {"app_room": ("0", 3 * seconds), "app_room_thinking": (str(APP_THINK_SECONDS), 2 * seconds)}
    write(result, args.out)
    for key, (think, length) in rooms.items() if args.app else ():
        try:
            run = ["--sessions", str(learners), "--seconds", str(length), "--think", think, "--timeout", "30"]
            result[key] = load_test([*run, "--deadline", "300"])
        except Exception as e:  # noqa: BLE001 -- the headless figures above stand without it: keep them, say why
            result[key] = {"error": f"{type(e).__name__}: {e}"[-2000:]}
        print(f"through the app, {learners} learners, think {think} s: {json.dumps(result[key])}", flush=True)
        write(result, args.out)
    return result


def one_learner(device, steps: int, rounds: int, batch: int = 64) -> dict:
    """One learner's steps/s at `batch`, interleaved round by round: Play as the app takes it on a GPU (turns of
    GPU_TURN_STEPS, read once each) with the session's default step (captured on a GPU, making its own batches),
    with each batch made by the host and copied in, and with eager steps; and Step clicks (one step, read at once)."""
    config = TrainConfig(batch_size=batch, device=str(device), eval_every=0)
    default, copied, eager = Session(config), Session(config), Session(replace(config, step_mode="eager"))
    loops = {
        "play": partial(in_turns, default),
        "copied": partial(in_turns, copied, batch=copied.next_batch),
        "eager": partial(in_turns, eager),
        "click": each(default.step),
    }
    times, _ = interleaved(loops, steps, rounds, device, warmup=4)
    rate = {name: statistics.median(steps / t for t in ts) for name, ts in times.items()}
    return {
        "step_mode": default.step_mode,
        "steps_s": round(rate["play"], 1),
        "batch_copied_steps_s": round(rate["copied"], 1),
        "eager_steps_s": round(rate["eager"], 1),
        "click_steps_s": round(rate["click"], 1),
        "speedup": round(rate["play"] / rate["eager"], 2),
        "captures": default.captures,
    }


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, interpolated linearly between the nearest ranks."""
    v = sorted(values)
    k = q * (len(v) - 1)
    lo = int(k)
    return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (k - lo)


def room(
    sessions: int,
    batch: int = 64,
    seconds: float = 20,
    device: str = "auto",
    precision: str = "auto",
    step_mode: str = "auto",
    own_stream: bool = True,
    **scheduler,
) -> dict:
    """A room headless: `sessions` learners all pressing Play for `seconds` on one pool, the app's scheduler
    (pool.for_device; `scheduler`: SessionPool settings other than its). Returns the learner-steps/s in total and,
    per learner, its steps, turns and the p50 and p95 of its wait between turns (the end of one to the start of the
    next), in ms: how long a learner's chart stands still while the others train."""
    config = TrainConfig(
        batch_size=batch, device=device, precision=precision, eval_every=0, step_mode=step_mode, own_stream=own_stream
    )
    if torch.cuda.is_available():  # this room's memory alone: not the graphs and cache an earlier room left
        graphstep.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    learners = [Session(replace(config, seed=i)) for i in range(sessions)]
    for s in learners:  # allocation, kernel choice and (on a GPU) the capture: not part of a room's rhythm
        s.step(4 if s.step_mode == "graph" else 1)
    pool = for_device(learners[0].device, lambda: None, sessions, 1800, **{"report_seconds": 1.0, **scheduler})
    for i, s in enumerate(learners):
        pool.replace(str(i), s)
    times: list[list[tuple[float, float, int]]] = [[] for _ in learners]  # per learner: (start, end, steps) of a turn

    def timed(i: int, s: Session, n: int) -> dict:
        t = time.perf_counter()
        report = s.step(n)  # returns once the device has finished (the steps' statistics are on the host)
        times[i].append((t, time.perf_counter(), report["done"] + report["rejected"]))
        return report

    def play(i: int):
        for _ in pool.train(str(i), seconds=seconds, step=partial(timed, i)):
            pass

    threads = [threading.Thread(target=play, args=(i,)) for i in range(sessions)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    steps = [sum(n for _, _, n in ts) for ts in times]
    waits = [[b[0] - a[1] for a, b in zip(ts, ts[1:])] or [0.0] for ts in times]
    p50 = [round(1000 * percentile(w, 0.5), 1) for w in waits]
    p95 = [round(1000 * percentile(w, 0.95), 1) for w in waits]
    return {
        "device": str(learners[0].device),
        "precision": learners[0].precision,
        "step_mode": learners[0].step_mode,
        "own_streams": learners[0].stream is not None,
        "sessions": sessions,
        "workers": pool.workers,
        "turn_steps": pool.turn_steps,
        "batch": batch,
        "seconds": round(elapsed, 1),
        "learner_steps": sum(steps),
        "learner_steps_s": round(sum(steps) / elapsed, 2),
        "img_s": round(sum(steps) * batch / elapsed, 1),
        "wait_p50_ms": round(statistics.median(p50), 1),  # the typical learner's typical wait
        "wait_p95_ms": max(p95),  # the unluckiest learner's slow turns
        "session_steps": steps,
        "session_turns": [len(ts) for ts in times],
        "session_wait_p50_ms": p50,
        "session_wait_p95_ms": p95,
        # the card's memory at its peak in this room (graphs included): what a room of this size needs
        **({"gpu_peak_mib": round(torch.cuda.max_memory_reserved() / 2**20)} if torch.cuda.is_available() else {}),
    }


def load_test(argv: list[str]) -> dict:
    """The app-driven figures, measured by tests/load_test.py in its own process (the package never talks HTTP):
    its progress lines echoed as they come, and its last line, a JSON object, returned. Raises with the load test's
    own error if it failed."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "tests" / "load_test.py"
    with subprocess.Popen([sys.executable, "-u", str(script), *argv], stdout=subprocess.PIPE, text=True) as run:
        lines = []
        for line in run.stdout:
            print(f"  load test: {line}", end="", flush=True)
            lines.append(line)
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {"error": "no JSON line"}
    if run.returncode or "error" in result:
        raise RuntimeError(f"tests/load_test.py {' '.join(argv)} failed ({run.returncode}): {result.get('error')}")
    return result


def write(result: dict, out: str | None):
    """The JSON to `out`: a bare file name lands in assets/bench/. Nothing is written without --out."""
    if out:
        path = Path(out) if Path(out).name != out else BENCH_DIR / out
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"written to {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="images per step (64; --gpu-check: 512)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round and loop")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds; the median is reported")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="auto, bf16 or fp32 for the session")
    p.add_argument("--quick", action="store_true", help="fewer rounds: about a minute on 2 CPU cores")
    p.add_argument("--gpu-check", action="store_true", help="all GPU measurements and the bf16 correctness check")
    p.add_argument("--app", action="store_true", help="also train through a launched app (with --gpu-check: a room)")
    p.add_argument("--room", action="store_true", help="N sessions stepped round-robin (--sessions, --seconds)")
    p.add_argument("--sessions", type=int, default=None, help="--room: learners' sessions (8; --gpu-check: 100)")
    p.add_argument(
        "--seconds", type=float, default=None, help="--room: how long they play (20 s; --gpu-check: 20, the app 3x)"
    )
    p.add_argument("--out", default=None, help="also write the JSON there (a bare name: under assets/bench/)")
    args = p.parse_args(argv)
    if args.gpu_check:
        result = gpu_check(args)
    elif args.room:
        seconds = args.seconds if args.seconds is not None else 20
        result = room(args.sessions or 8, args.batch or 64, seconds, args.device, args.precision)
        print(
            f"room of {result['sessions']} on {result['device']} ({result['precision']}), batch {result['batch']}: "
            f"{result['learner_steps_s']} learner-steps/s ({result['img_s']} img/s) over {result['seconds']} s; "
            f"wait between a learner's turns: p50 {result['wait_p50_ms']} ms (median learner), "
            f"p95 {result['wait_p95_ms']} ms (worst learner)"
        )
    else:
        result = speed_on_this_device(args)
    print(json.dumps(result))
    write(result, args.out)
    return result


def speed_on_this_device(args) -> dict:
    steps = args.steps or (2 if args.quick else 4)
    rounds = args.rounds or (9 if args.quick else 15)
    args.batch = args.batch or 64
    config = TrainConfig(batch_size=args.batch, device=args.device, precision=args.precision, eval_every=0)
    session = Session(config)
    device = session.device
    loops = {"notebook": notebook_loop(load_dataset(config.dataset, device), device, args.batch)}
    loops["engine"], loops["engine_no_telemetry"] = session_loops(session)
    loops["ceiling"], flops = ceiling_loop(session)
    figures = speed(loops, args.batch, steps, rounds, device)
    img_s = figures["img_s"]
    layers_gflop_s = img_s["ceiling"] * flops["train_gflop_per_image"]
    print_speed(
        figures,
        f"device {device} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, session precision {session.precision}, batch {args.batch}, "
        f"{rounds} rounds x {steps} steps",
    )
    print(
        f"ceiling: the model's conv and linear layers alone, forward and backward ({flops['gflop_per_image']:.3f} "
        f"GFLOP/image forward), at the {layers_gflop_s:.0f} GFLOP/s they reach here ({session.precision})"
    )
    extra = {}
    if args.app:
        # The app's sessions also measure held-out accuracy (TrainConfig's defaults: 500 images every 50 steps), so
        # its headless twin is the engine's step plus that evaluation, amortised: like for like, not UI work.
        session.config = replace(session.config, telemetry=True)
        evaluate = each(partial(session.evaluate, config.eval_size))
        measure(evaluate, 1, device)
        eval_s = statistics.median(measure(evaluate, 1, device) for _ in range(3))
        step_ms = 1000 * args.batch / img_s["engine"]
        headless = args.batch / (step_ms / 1000 + eval_s / TrainConfig.eval_every)
        extra = load_test(["--app-speed", "--seconds", "20" if args.quick else "60", "--deadline", "240"])  # batch 64
        extra["headless_with_eval_img_s"] = round(headless, 1)
        extra["app_ratio"] = round(extra["app_img_s"] / headless, 3)
        extra["app_ratio_training_only"] = round(extra["app_img_s"] / img_s["engine"], 3)
        print(
            f"headless with the app's held-out evaluation ({config.eval_size} images every {TrainConfig.eval_every} "
            f"steps, {eval_s * 1000:.0f} ms each): {headless:.1f} img/s"
        )
        print(
            f"through the app: {extra['app_img_s']} img/s ({extra['app_ratio']:.2f} x headless with evaluation, "
            f"{extra['app_ratio_training_only']:.2f} x training alone), {extra['updates_per_s']} chart updates/s; "
            f"Step round trip {extra['step_roundtrip_ms']} ms for a {step_ms:.0f} ms step"
        )
    return {
        "device": str(device),
        "precision": session.precision,
        "batch": args.batch,
        "rounds": rounds,
        "steps": steps,
        **extra,
        "notebook_img_s": round(img_s["notebook"], 1),
        "engine_img_s": round(img_s["engine"], 1),
        "engine_no_telemetry_img_s": round(img_s["engine_no_telemetry"], 1),
        "ceiling_img_s": round(img_s["ceiling"], 1),
        "range_img_s": {name: [round(v, 1) for v in r] for name, r in figures["range"].items()},
        "ratio": round(img_s["engine"] / img_s["notebook"], 3),
        "ceiling_ratio": round(img_s["ceiling"] / img_s["notebook"], 3),
        "telemetry_overhead": round(figures["telemetry_overhead"], 4),
        "telemetry_overhead_spread": round(figures["telemetry_overhead_spread"], 4),
        "engine_vs_ceiling": round(figures["engine_vs_ceiling"], 3),
        "engine_vs_ceiling_spread": round(figures["engine_vs_ceiling_spread"], 3),
        "telemetry_overhead_best": round(figures["telemetry_overhead_best"], 4),
        "engine_vs_ceiling_best": round(figures["engine_vs_ceiling_best"], 3),
        "gflop_per_image": round(flops["gflop_per_image"], 3),
        "layers_gflop_s": round(layers_gflop_s, 1),
    }


if __name__ == "__main__":
    main()
