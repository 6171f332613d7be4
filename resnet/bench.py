"""Training speed, measured in one run on one device: `python -m resnet.bench [--quick]`.

Baseline is the notebook's own loop (its model, fp32, NCHW, eager Adam, batches drawn with randint, no
augmentation) on the same data; against it, the
session's `step()` with telemetry on and off, and the ceiling: the model's convolutions alone, forward and backward,
at the device's speed for them. Runs are interleaved round by round and each figure is the median round, because
two processes (or a busy neighbour) on 2 cores slow each other. Last line: one JSON object.
"""

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace
from functools import partial

import torch
import torch.nn as nn

from .data import load_dataset, normalize
from .engine import Session, TrainConfig
from .notebook import NotebookResNet


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


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
        loss.item()  # the notebook prints the loss each step: a host sync, like the session's

    return step


def session_loop(config: TrainConfig):
    session = Session(config)
    return lambda: session.step(1), session


def ceiling(session: Session, reps: int = 5) -> dict:
    """The most img/s this device could train the session's model: its conv and linear layers alone, forward and
    backward (input and weight gradients), each timed in isolation at the session's batch, precision and memory
    format. BN, ReLU, the loss and the optimizer only add time. Timed, not assumed: on a CPU without AVX-512, the
    backward convolutions run well below the forward's speed. Returns the forward GFLOP per image, the layers'
    training GFLOP/s and the ceiling in img/s."""
    import torch.nn.functional as F

    shapes = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o: shapes.__setitem__(m, i[0].shape)) for m in session.layers.values()
    ]
    x, _ = session.next_batch()  # (B, 3, 32, 32)
    with torch.no_grad():
        session.model(x)
    for h in hooks:
        h.remove()
    forward_flops, train_flops, seconds = 0, 0, 0.0
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
        grad = torch.randn_like(out)
        leaves = [inp, weight] if i > 0 else [weight]

        def step(run=run, inp=inp, grad=grad, leaves=leaves):
            with session._autocast():
                out = run(inp)
            torch.autograd.grad(out, leaves, grad)  # returned, not accumulated into .grad: no extra add per rep

        step()
        seconds += min(measure(step, 1, session.device) for _ in range(reps))
    batch = x.shape[0]
    return {
        "gflop_per_image": forward_flops / batch / 1e9,
        "layers_gflop_s": train_flops / seconds / 1e9,
        "ceiling_img_s": batch / seconds,
    }


def measure(step, steps: int, device) -> float:
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return time.perf_counter() - t


def gpu_agreement(device, batch: int = 64) -> dict:
    """One training step of the same weights on the same batch: the device's bf16 session against a float64 CPU
    reference. Returns the largest relative differences of the loss and the per-layer gradient norms."""
    import copy

    import torch.nn.functional as F

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
    """Every GPU measurement in one command (< 8 min on one card): throughput at batch 512 for the notebook loop,
    the session with and without telemetry, compiled, and the bf16-vs-float64 agreement."""
    device = torch.device("cuda" if args.device == "auto" else args.device)
    batch, steps, rounds = args.batch if args.batch != 64 else 512, args.steps or 50, args.rounds or 3
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{device} (a dry run)"
    data = load_dataset("shapes", device)
    loops = {"notebook": notebook_loop(data, device, batch)}
    base = TrainConfig(batch_size=batch, device=str(device), eval_every=0)
    loops["engine"], session = session_loop(base)
    loops["engine_no_telemetry"] = session_loop(replace(base, telemetry=False))[0]
    loops["engine_compiled"] = session_loop(replace(base, compile=True))[0]
    loops["engine_compiled_no_telemetry"] = session_loop(replace(base, compile=True, telemetry=False))[0]
    try:
        from .twin import TwinSession

        twin = TwinSession(base)
        loops["twin"] = lambda: twin.step(1)
    except Exception as e:  # noqa: BLE001 -- the twin is optional here; say why it is missing
        print(f"twin not measured: {e}")
    warm = {}
    for key, step in loops.items():
        t = time.perf_counter()
        measure(step, 10, device)  # compiles, autotunes
        warm[key] = round(time.perf_counter() - t, 1)
    times = {key: [] for key in loops}
    for _ in range(rounds):
        for key, step in loops.items():
            times[key].append(measure(step, steps, device))
    img_s = {key: steps * batch / statistics.median(t) for key, t in times.items()}
    bound = ceiling(session)
    print(f"{name}, torch {torch.__version__}, batch {batch}, {rounds} rounds x {steps} steps")
    print(f"{'loop':<32}{'img/s':>12}{'x notebook':>12}{'warm-up s':>11}")
    for key, v in img_s.items():
        print(f"{key:<32}{v:>12.0f}{v / img_s['notebook']:>12.2f}{warm[key]:>11}")
    print(
        f"{'ceiling (convolutions alone)':<32}{bound['ceiling_img_s']:>12.0f}"
        f"{bound['ceiling_img_s'] / img_s['notebook']:>12.2f}"
    )
    agreement = gpu_agreement(device)
    print(
        f"bf16 on {name} vs float64 on CPU, one step: loss rel diff {agreement['loss_rel_diff']:.2e}, "
        f"largest grad-norm rel diff {agreement['grad_norm_rel_diff']:.2e}"
    )
    return {
        "device": name,
        "batch": batch,
        **{f"{k}_img_s": round(v) for k, v in img_s.items()},
        "ceiling_img_s": round(bound["ceiling_img_s"]),
        "layers_tflop_s": round(bound["layers_gflop_s"] / 1e3, 1),
        "warmup_s": warm,
        "tflops_engine_best": round(max(img_s.values()) * 1.27e9 / 1e12, 1),
        **agreement,
    }


def app_speed(seconds: float) -> dict:
    """The app-driven figures, measured by tests/load_test.py in its own process: the package never talks HTTP."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "tests" / "load_test.py"
    out = subprocess.run(
        [sys.executable, str(script), "--app-speed", "--seconds", str(seconds)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64, help="images per step")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round and loop")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds; the median is reported")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="auto, bf16 or fp32 for the session")
    p.add_argument("--quick", action="store_true", help="fewer steps: about a minute on 2 CPU cores")
    p.add_argument("--gpu-check", action="store_true", help="all GPU measurements and the bf16 correctness check")
    p.add_argument("--app", action="store_true", help="also train through a launched app (python app.py)")
    args = p.parse_args(argv)
    if args.gpu_check:
        result = gpu_check(args)
        print(json.dumps(result))
        return result
    steps = args.steps or (6 if args.quick else 20)
    rounds = args.rounds or (3 if args.quick else 5)

    config = TrainConfig(batch_size=args.batch, device=args.device, precision=args.precision, eval_every=0)
    engine, session = session_loop(config)
    bare, _ = session_loop(replace(config, telemetry=False))
    device = session.device
    data = load_dataset(config.dataset, device)
    loops = {"notebook": notebook_loop(data, device, args.batch), "engine": engine, "engine_no_telemetry": bare}
    for step in loops.values():  # warm-up: allocator, oneDNN kernel choice, cuDNN autotune
        measure(step, 3, device)
    times = {name: [] for name in loops}
    for _ in range(rounds):
        for name, step in loops.items():
            times[name].append(measure(step, steps, device))
    img_s = {name: steps * args.batch / statistics.median(t) for name, t in times.items()}
    bound = ceiling(session)
    img_s["ceiling"] = bound["ceiling_img_s"]

    print(
        f"device {device} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, session precision {session.precision}, batch {args.batch}, "
        f"{rounds} rounds x {steps} steps"
    )
    print(f"{'loop':<22}{'img/s':>10}{'x notebook':>12}")
    for name, v in img_s.items():
        print(f"{name:<22}{v:>10.1f}{v / img_s['notebook']:>12.2f}")
    print(
        f"ceiling: the model's conv and linear layers alone, forward and backward ({bound['gflop_per_image']:.3f} "
        f"GFLOP/image forward), at the {bound['layers_gflop_s']:.0f} GFLOP/s they reach here ({session.precision})"
    )
    extra = {}
    if args.app:
        # The app's sessions also measure held-out accuracy (TrainConfig's defaults: 500 images every 50 steps), so
        # its headless twin is the engine's step plus that evaluation, amortised: like for like, not UI work.
        evaluate = partial(session.evaluate, config.eval_size)
        measure(evaluate, 1, device)
        eval_s = statistics.median(measure(evaluate, 1, device) for _ in range(3))
        step_ms = 1000 * args.batch / img_s["engine"]
        headless = args.batch / (step_ms / 1000 + eval_s / TrainConfig.eval_every)
        extra = app_speed(seconds=20 if args.quick else 60)  # at batch 64, the app's default
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
    result = {
        "device": str(device),
        "precision": session.precision,
        "batch": args.batch,
        **extra,
        "notebook_img_s": round(img_s["notebook"], 1),
        "engine_img_s": round(img_s["engine"], 1),
        "engine_no_telemetry_img_s": round(img_s["engine_no_telemetry"], 1),
        "ratio": round(img_s["engine"] / img_s["notebook"], 3),
        "telemetry_overhead": round(1 - img_s["engine"] / img_s["engine_no_telemetry"], 4),
        "ceiling_img_s": round(img_s["ceiling"], 1),
        "ceiling_ratio": round(img_s["ceiling"] / img_s["notebook"], 3),
        "gflop_per_image": round(bound["gflop_per_image"], 3),
        "layers_gflop_s": round(bound["layers_gflop_s"], 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
