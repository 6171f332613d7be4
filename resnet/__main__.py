"""Command line: train headless, or predict an image with a saved checkpoint.

python -m resnet train --dataset shapes --steps 300 [--shortcut on|off] [--save DIR]
python -m resnet predict DIR IMAGE
"""

import argparse
import sys
import time

from tqdm import tqdm  # comes with huggingface-hub


def train(args) -> dict:
    from .model import ResNetConfig, cifar_config
    from .session import Session, TrainConfig

    config = TrainConfig(
        dataset=args.dataset,
        lr=args.lr,
        optimizer=args.optimizer,
        batch_size=args.batch,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        eval_every=0,
    )
    model_config = cifar_config(args.depth_n) if args.depth_n else ResNetConfig()
    t0 = time.perf_counter()
    session = Session(config, model_config)
    session.set_shortcut(args.shortcut == "on")
    with tqdm(total=args.steps, desc=f"train ({session.device}, {session.precision})", file=sys.stderr) as bar:
        while session.step_count < args.steps:
            report = session.step(min(10, args.steps - session.step_count))
            for message in report["messages"]:
                tqdm.write(message, file=sys.stderr)
            if report["last"]:
                bar.set_postfix(loss=f"{report['last']['loss']:.3f}", acc=f"{report['last']['acc']:.2f}")
            bar.update(report["done"])
            if report["done"] == 0:
                sys.exit("every step was rejected: lower the learning rate")
    held_out = session.evaluate()
    seconds = time.perf_counter() - t0
    print(
        f"held-out accuracy {held_out['acc']:.4f} (loss {held_out['loss']:.4f}) on {len(session.data.test_y)} "
        f"images after {session.step_count} steps, shortcut {args.shortcut}, {seconds:.0f} s on {session.device}"
    )
    if args.save:
        from .checkpoint import save

        print(f"saved to {save(session.model, args.save, session.data.classes, args.dataset)}")
    return held_out


def predict(args) -> None:
    from .checkpoint import load
    from .inference import predict as run

    model = load(args.checkpoint)
    for name, p in run(model, args.image, model.classes, k=args.top)["top"]:
        print(f"{p:7.2%}  {name}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m resnet", description="ResNet Playground, headless")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a session and print its held-out accuracy")
    t.add_argument("--dataset", default="shapes")
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--shortcut", choices=["on", "off"], default="on", help="all blocks' shortcuts")
    t.add_argument(
        "--depth-n", type=int, default=0, help="n>0: the paper's 6n+2-layer CIFAR net instead of the notebook's"
    )
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--precision", default="auto")
    t.add_argument("--save", metavar="DIR", help="write a checkpoint (safetensors + config.json) here")
    t.set_defaults(run=train)
    q = sub.add_parser("predict", help="top classes of an image under a saved checkpoint")
    q.add_argument("checkpoint", help="a directory written by --save, or a Hub repo id")
    q.add_argument("image")
    q.add_argument("--top", type=int, default=3)
    q.set_defaults(run=predict)
    args = p.parse_args(argv)
    try:
        args.run(args)
    except ValueError as e:  # unknown dataset, bad image, bad checkpoint: a message, not a traceback
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
