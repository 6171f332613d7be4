"""Guided experiments: each claim the app makes about shortcuts, one click away, and checked on the run's own data.

An Experiment is plain data: texts in English and Chinese, a network, its settings and phases such as ("train", 150),
("shortcuts", False). A GuidedRun executes them a few steps at a time on a Session or TwinSession while the app streams
charts; effect() reads the claim off what the run recorded and checks it against a threshold, with a readout.
"""

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean

import torch

from .errors import UserError
from .model import cifar_config
from .session import History, Session, Snapshot, TrainConfig, thin
from .twin import TwinSession

EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"  # NAME.png: a drawing of the class NAME
RECORDED = Path(__file__).resolve().parent.parent / "assets" / "recorded"  # ID.json: a full run of each experiment
# What a phase is and the value it takes. "lesions" runs on a TwinSession only; "shortcuts" and "gradients" on a
# Session only (a twin whose shortcuts switched would be no twin).
PHASES = {
    "train": "training steps to attempt (a rejected step counts: it was attempted)",
    "shortcuts": "True or False: every block's shortcut on or off",
    "lr": "the new learning rate",
    "lesions": "held-out images per lesion: TwinSession.lesions(size)",
    "gradients": "an example drawing's name: Session.gradients of EXAMPLES/NAME.png, shortcuts all on, then all off",
}
# The Chinese names of the shapes classes, for texts that name an example drawing
SHAPES_ZH = {
    "circle": "圆",
    "square": "正方形",
    "triangle": "三角形",
    "star": "五角星",
    "heart": "心形",
    "crescent": "月牙",
    "plus": "加号",
    "cross": "叉号",
    "arrow": "箭头",
    "lightning": "闪电",
}


@dataclass(frozen=True)
class Text:
    en: str  # English
    zh: str  # Simplified Chinese (zh-CN)


@dataclass(frozen=True)
class Setup:
    """A network, how it trains, and the phases run on it: everything a run needs to be reproduced."""

    layers: int  # depth of the paper's CIFAR net, 6n+2 (cifar_config(n)): 20 is ResNet-20, 56 is ResNet-56
    phases: tuple[tuple[str, object], ...]  # in order; each (kind, value) with kind in PHASES
    seed: int = 0  # initial weights, batch order and augmentation
    lr: float = 1e-3  # step size (the app's default)
    optimizer: str = "adam"  # "adam" or "sgd" (momentum 0.9)
    batch_size: int = 64  # images per training step
    dataset: str = "shapes"  # a name in resnet.data.DATASETS
    width: int = 16  # channels of the first stage, then 2x and 4x (the paper's 16); fewer: a faster, weaker net
    window: int = 20  # steps averaged on each side of a switch and at the end of a run: one batch is noisy

    def __post_init__(self):
        if self.layers < 8 or (self.layers - 2) % 6:
            raise ValueError(f"layers must be 6n+2 with n >= 1 (8, 14, 20, 32, 56, ...); got {self.layers}")
        for kind, _ in self.phases:
            if kind not in PHASES:
                raise ValueError(f"unknown phase {kind!r}; choose from {list(PHASES)}")

    @property
    def network(self) -> str:
        return f"ResNet-{self.layers}"

    @property
    def steps(self) -> int:
        """Training steps attempted over all phases."""
        return sum(value for kind, value in self.phases if kind == "train")

    def train_config(self, device: str = "auto", precision: str = "auto") -> TrainConfig:
        return TrainConfig(
            dataset=self.dataset,
            optimizer=self.optimizer,
            lr=self.lr,
            batch_size=self.batch_size,
            seed=self.seed,
            eval_every=0,  # no claim rests on held-out curves; evaluations would only slow the run
            device=device,
            precision=precision,
            history_points=max(2000, self.steps),  # every step kept: before_after needs them all
        )

    def model_config(self):
        return cifar_config((self.layers - 2) // 6, self.width)

    def values(self) -> dict:
        """What the texts may name: {network}, {steps}, {train[0]}, {lr:g}, {image}, {image_zh}, ..."""
        kinds = {}
        for kind, value in self.phases:
            kinds.setdefault(kind, []).append(value)
        image = kinds.get("gradients", [""])[0]
        return {
            **asdict(self),
            "network": self.network,
            "steps": self.steps,
            "train": kinds.get("train", []),
            "lesion_size": kinds.get("lesions", [0])[0],
            "image": image,
            "image_zh": SHAPES_ZH.get(image, image),
        }


@dataclass(frozen=True)
class Check:
    """One number the claim rests on, and the bound it must meet."""

    what: str  # the number's key in the effect's "numbers"
    op: str  # ">=" or "<="
    threshold: float  # the bound


@dataclass(frozen=True)
class Experiment:
    id: str  # stable key: the registry, the recording's file name, the app's choices
    title: Text
    setup_text: Text  # what it sets up
    watch: Text  # which chart to watch
    expect: Text  # what to expect: the claim, with the thresholds effect() checks
    readout: Text  # one line with the run's numbers: a format string over effect()'s "numbers"
    chart: str  # the app's chart to show: "loss", "twin_loss", "lesions" or "gradient_bars"
    twin: bool  # runs on a TwinSession (residual and plain side by side) instead of a Session
    full: Setup  # the app's settings: the effect within about 2 minutes on 2 CPU cores
    fast: Setup  # the tests' settings: seconds, the same effect
    checks: tuple[Check, ...]  # all must hold for the claim to hold; the first is the headline

    def __post_init__(self):
        for setup in (self.full, self.fast):
            kinds = {kind for kind, _ in setup.phases}
            wrong = kinds & ({"shortcuts", "gradients"} if self.twin else {"lesions"})
            if wrong:
                raise ValueError(f"{self.id}: phase {sorted(wrong)} cannot run on a {'Twin' * self.twin}Session")

    def texts(self, fast: bool = False) -> dict[str, dict[str, str]]:
        """{"title", "setup", "watch", "expect"} -> {"en", "zh"}, with the settings' numbers filled in."""
        values = (self.fast if fast else self.full).values()
        parts = {"title": self.title, "setup": self.setup_text, "watch": self.watch, "expect": self.expect}
        return {key: {"en": t.en.format(**values), "zh": t.zh.format(**values)} for key, t in parts.items()}


# --- the experiments -----------------------------------------------------------------------------------------------
# Settings chosen by measuring on 2 shared vCPUs of an Intel Xeon with AMX (bf16 autocast), one torch thread, and
# checked at fp32 too: every threshold holds with room at full and at fast settings. The full runs' own numbers are in
# assets/recorded (python -m resnet.experiment --guided --record assets/recorded).
EXPERIMENTS = {
    e.id: e
    for e in [
        Experiment(
            id="shortcuts_off",
            title=Text("Shortcuts off, mid-training ({network})", "训练中途关掉残差连接（{network}）"),
            setup_text=Text(
                "{network} trains {train[0]} steps with every shortcut on; then all shortcuts are switched off and it "
                "trains {train[1]} steps more. The switch changes no weight: only the '+ x' is gone.",
                "{network} 先在残差连接全部开启的状态下训练 {train[0]} 步，然后关掉所有残差连接，再训练 {train[1]} 步。"
                "切换不改动任何权重，只是去掉了把输入直接加到输出上的那一项。",
            ),
            watch=Text(
                "The loss chart at the switch; then the before/after bars: each layer's mean gradient norm over the "
                "{window} steps before the switch and the {window} after.",
                "先看损失曲线在切换那一刻的变化；再看前后对比柱状图：每一层在切换前 {window} 步与切换后 {window} 步的"
                "平均梯度范数。",
            ),
            expect=Text(
                "After {train[0]} steps the loss is well below chance (under 80% of 2.30, a uniform guess among 10 "
                "classes). At the switch it climbs back at least half of the way it had come down: no weight changed, "
                "yet most of what those steps taught is gone. The gradients do not vanish: the stem's gradient norm "
                "at least doubles. With batch norm, a deep plain net's trouble is not small gradients (He et al. 2016 "
                "found healthy gradient norms in their plain nets too), yet it learns far more slowly: see the "
                "experiment 'Plain vs residual at 56 layers'.",
                "训练 {train[0]} 步后，损失已明显低于随机猜测的水平（不到 2.30 的 80%；2.30 是在十个类别中均匀乱猜时的"
                "损失）。切换的那一刻，损失至少回升了此前降幅的一半：权重一个都没变，这些步学到的东西却大半没了。"
                "梯度并没有消失：stem 层的梯度范数反而至少翻倍。有了批归一化，深层普通网络的问题不在于梯度太小"
                "（何恺明等人 2016 年也发现，他们的普通网络梯度范数正常），但它学得慢得多："
                "参见实验“56 层：普通网络与残差网络”。",
            ),
            readout=Text(
                "Loss {loss_before:.2f} before the switch, {loss_after:.2f} in the {k} steps after (chance "
                "{chance_loss:.2f}): {undone:.0%} of the way back to chance; {loss_end:.2f} at the end. Gradient "
                "norm ×{stem_ratio:.1f} at the stem, ×{fc_ratio:.2f} at fc.",
                "切换前损失 {loss_before:.2f}，切换后 {k} 步内为 {loss_after:.2f}（随机猜测为 {chance_loss:.2f}），"
                "此前的降幅被抹去了 {undone:.0%}；结束时为 {loss_end:.2f}。梯度范数在 stem 层变为 "
                "{stem_ratio:.1f} 倍，在 fc 层变为 {fc_ratio:.2f} 倍。",
            ),
            chart="loss",
            twin=False,
            full=Setup(56, (("train", 150), ("shortcuts", False), ("train", 60))),
            fast=Setup(44, (("train", 80), ("shortcuts", False), ("train", 10)), width=8, window=10),
            # the net must have learned before the switch (loss under 80% of chance), or there is nothing to undo
            checks=(Check("undone", ">=", 0.5), Check("stem_ratio", ">=", 2.0), Check("learned", "<=", 0.8)),
        ),
        Experiment(
            id="plain_vs_residual",
            title=Text("Plain vs residual at {layers} layers", "{layers} 层：普通网络与残差网络"),
            setup_text=Text(
                "Two {network}s start from the same weights and train {steps} steps on the same batches: one with "
                "its shortcuts, its plain twin without.",
                "两个 {network} 从相同的权重出发，在相同的批次上训练 {steps} 步：一个带残差连接，另一个（它的普通孪生）"
                "不带。",
            ),
            watch=Text("The twins' loss and accuracy curves.", "两个孪生网络的损失曲线和准确率曲线。"),
            expect=Text(
                "The plain twin's loss stays at chance (2.30: a uniform guess among 10 classes) while the residual "
                "twin's falls; over the last {window} steps the residual twin gets at least 3 times as many training "
                "images right. Same weights, same data: the shortcuts alone make the difference.",
                "普通网络的损失一直停在随机猜测的水平（2.30，即在十个类别中均匀乱猜），残差网络的损失则持续"
                "下降；最后 {window} 步里，残差网络答对的训练图像至少是普通网络的 3 倍。权重相同，数据相同，"
                "差别只来自残差连接。",
            ),
            readout=Text(
                "Last {k} steps: residual loss {res_loss:.2f}, accuracy {res_acc:.0%}; plain loss {plain_loss:.2f} "
                "(chance {chance_loss:.2f}), accuracy {plain_acc:.0%}: ×{acc_ratio:.1f}.",
                "最后 {k} 步：残差网络损失 {res_loss:.2f}，准确率 {res_acc:.0%}；普通网络损失 {plain_loss:.2f}"
                "（随机猜测为 {chance_loss:.2f}），准确率 {plain_acc:.0%}；相差 {acc_ratio:.1f} 倍。",
            ),
            chart="twin_loss",
            twin=True,
            full=Setup(56, (("train", 120),)),
            fast=Setup(56, (("train", 100),), width=8, window=10),
            checks=(Check("acc_ratio", ">=", 3.0), Check("plain_chance", ">=", 0.95)),
        ),
        Experiment(
            id="lesion",
            title=Text("Remove one block ({network})", "损伤实验：去掉一个块（{network}）"),
            setup_text=Text(
                "Two {network} twins, residual and plain (same start, same batches), train {steps} steps. Then each "
                "block in turn is bypassed at test time, its residual branch dropped and no weight changed, and the "
                "held-out accuracy is measured on {lesion_size} images.",
                "两个 {network} 孪生网络（残差与普通，起点相同、批次相同）训练 {steps} 步。然后在测试时依次绕过每个块："
                "去掉它的残差分支，不改任何权重，在 {lesion_size} 张留出图像上测量准确率。",
            ),
            watch=Text(
                "The lesion chart: accuracy with each block removed, against each net's intact accuracy.",
                "损伤图：去掉各个块之后的准确率，与两个网络各自完整时的准确率对比。",
            ),
            expect=Text(
                "Remove a block from the plain net and it loses most of what it learned (its accuracy above the 10% "
                "of a guess): each layer feeds the next and nothing else. The residual net behaves like many paths of "
                "different lengths (Veit et al. 2016) and survives a lesion far better: on average over the blocks it "
                "keeps at least 3 times as large a share of its above-chance accuracy.",
                "从普通网络中去掉一个块，它学到的东西（高于乱猜准确率 10% 的那部分）大半就没了：每一层只把结果交给"
                "下一层，别无他路。残差网络则像许多条长短不一的路径的集合（2016 年一项关于残差网络的研究正是这样"
                "解释的），去掉一个块后保住的要多得多：按所有块平均，它保留下来的高于随机猜测的那部分准确率，占比至少是"
                "普通网络的 3 倍。",
            ),
            readout=Text(
                "Intact: residual {res_intact:.0%}, plain {plain_intact:.0%}. One block removed, on average: "
                "residual {res_lesioned:.0%}, plain {plain_lesioned:.0%} (chance {chance:.0%}). Share of the "
                "above-chance accuracy kept: {res_kept:.0%} vs {plain_kept:.0%}, ×{kept_ratio:.1f}.",
                "完整网络：残差 {res_intact:.0%}，普通 {plain_intact:.0%}。去掉一个块后平均："
                "残差 {res_lesioned:.0%}，普通 {plain_lesioned:.0%}（随机猜测为 {chance:.0%}）。"
                "高于随机猜测的准确率保留了：残差 {res_kept:.0%}，普通 {plain_kept:.0%}，相差 {kept_ratio:.1f} 倍。",
            ),
            chart="lesions",
            twin=True,
            full=Setup(20, (("train", 200), ("lesions", 500))),
            fast=Setup(20, (("train", 100), ("lesions", 500))),
            checks=(Check("kept_ratio", ">=", 3.0), Check("plain_kept", "<=", 0.5), Check("plain_learned", ">=", 2.0)),
        ),
        Experiment(
            id="lr_1000",
            title=Text("A learning rate of 1000", "学习率设为 1000"),
            setup_text=Text(
                "{network} trains {train[0]} steps at lr {lr:g}; then the learning rate is set to 1000 for "
                "{train[1]} step, and back to {lr:g} for {train[2]} steps more.",
                "{network} 以学习率 {lr:g} 训练 {train[0]} 步；然后把学习率设为 1000，走 {train[1]} 步；再改回 {lr:g}，"
                "继续训练 {train[2]} 步。",
            ),
            watch=Text(
                "The loss chart: the rejected step adds no point, only an orange dashed line; the line under Run "
                "counts the rejected steps at the end.",
                "损失曲线：被拒绝的那一步不会留下数据点，只有一条橙色虚线；结束时，“运行”按钮下方的文字会统计被拒绝的步数。",
            ),
            expect=Text(
                "At lr 1000 one step would replace every weight with something many times its size. The guard finds "
                "the update far too large (over 10 times a layer's weights, or not finite), rejects the step and "
                "puts back weights, batch-norm statistics and optimizer state exactly: the largest change of any of "
                "them is 0. Back at lr {lr:g}, training goes on from where it was.",
                "学习率为 1000 时，一步更新就会把每个权重都换成比它大许多倍的数。保护机制发现更新大得离谱（超过某层权重"
                "的 10 倍，或已不是有限值），于是拒绝这一步，并把权重、批归一化统计量和优化器状态原样恢复：其中任何一个"
                "数的最大变化都是 0。改回学习率 {lr:g} 后，训练从原处接着进行。",
            ),
            readout=Text(
                "{rejected} of {attempted} steps at lr 1000 rejected; largest change of any weight or batch-norm "
                "statistic: {moved:g} (over the {train[0]} steps before: {moved_before:.3f}); then {resumed} of "
                "{train[2]} steps at lr {lr:g} taken.",
                "学习率 1000 下 {attempted} 步中有 {rejected} 步被拒绝；权重和批归一化统计量的最大变化为 "
                "{moved:g}（此前 {train[0]} 步中为 {moved_before:.3f}）；之后以学习率 {lr:g} 完成了 "
                "{train[2]} 步中的 {resumed} 步。",
            ),
            chart="loss",
            twin=False,
            full=Setup(20, (("train", 30), ("lr", 1000.0), ("train", 1), ("lr", 1e-3), ("train", 10))),
            fast=Setup(8, (("train", 3), ("lr", 1000.0), ("train", 1), ("lr", 1e-3), ("train", 2)), batch_size=16),
            checks=(Check("all_rejected", ">=", 1.0), Check("moved", "<=", 0.0), Check("all_resumed", ">=", 1.0)),
        ),
        Experiment(
            id="drawing_gradients",
            title=Text(
                "One drawing: gradients with shortcuts on and off ({network})",
                "一张图：残差连接开与关时的梯度（{network}）",
            ),
            setup_text=Text(
                "A fresh {network}, not trained yet, sees one drawing: the example '{image}', labelled {image}. The "
                "gradient of its loss is computed for every layer twice, with all shortcuts on and with all off. "
                "No step is taken.",
                "一个刚初始化、尚未训练的 {network} 看一张手绘图：示例中的{image_zh}，标注也是{image_zh}。"
                "对每一层计算两次损失的梯度：一次残差连接全部开启，一次全部关闭。不更新任何权重。",
            ),
            watch=Text(
                "The gradient-norm bars, layer by layer from the stem (input) to fc, on a log scale.",
                "梯度范数柱状图：从 stem 层（输入端）到 fc 层逐层排列，纵轴为对数刻度。",
            ),
            expect=Text(
                "The notebook says shortcuts fight vanishing gradients. With batch norm, a fresh deep plain net shows "
                "the reverse trouble: its gradient grows towards the input, and at the stem it is at least 10 times "
                "what it is with shortcuts on. From the last conv to the stem it grows at least 10 times more without "
                "shortcuts than with them.",
                "课程笔记说残差连接能缓解梯度消失。有了批归一化，刚初始化的深层普通网络出现的是相反的问题：梯度朝输入端"
                "越变越大，到 stem 层时至少是残差连接开启时的 10 倍。从最后一个卷积层到 stem 层，没有残差连接时梯度的"
                "增长倍数至少是有残差连接时的 10 倍。",
            ),
            readout=Text(
                "Stem gradient norm {stem_on:.1f} with shortcuts on, {stem_off:.1f} off (×{stem_ratio:.0f}); from the "
                "last conv to the stem it grows ×{spread_on:.0f} with shortcuts, ×{spread_off:.0f} without.",
                "stem 层梯度范数：残差连接开启时 {stem_on:.1f}，关闭时 {stem_off:.1f}（{stem_ratio:.0f} 倍）；"
                "从最后一个卷积层到 stem 层，梯度有残差连接时增长 {spread_on:.0f} 倍，没有时增长 {spread_off:.0f} 倍。",
            ),
            chart="gradient_bars",
            twin=False,
            full=Setup(56, (("gradients", "star"),)),
            fast=Setup(56, (("gradients", "star"),)),
            checks=(Check("stem_ratio", ">=", 10.0), Check("spread_ratio", ">=", 10.0)),
        ),
    ]
}


def get(experiment_id: str) -> Experiment:
    if experiment_id not in EXPERIMENTS:
        raise UserError(f"unknown experiment {experiment_id!r}; choose from {list(EXPERIMENTS)}")
    return EXPERIMENTS[experiment_id]


# --- running -----------------------------------------------------------------------------------------------------
def prepare(experiment: Experiment, setup: Setup, session=None, device: str = "auto", precision: str = "auto"):
    """A Session (TwinSession for a twin experiment) at the setup's network, seed and settings, history empty.
    `session`: the learner's own, reset to them (it must be of the right kind and on the setup's dataset); else a
    new one on `device` at `precision`."""
    kind = TwinSession if experiment.twin else Session
    if session is None:
        return kind(setup.train_config(device, precision), setup.model_config())
    if not isinstance(session, kind):
        raise UserError(f"the experiment {experiment.id!r} runs on a {kind.__name__}, not a {type(session).__name__}")
    config = session.residual.config if experiment.twin else session.config
    if config.dataset != setup.dataset:
        raise UserError(f"the experiment {experiment.id!r} runs on the {setup.dataset!r} dataset: load it first")
    with session.lock:
        session.configure(lr=setup.lr, optimizer=setup.optimizer, batch_size=setup.batch_size)
        session.reset(setup.seed, setup.model_config())  # after configure: no setting-change events in the history
    return session


def example(name: str, classes) -> tuple[torch.Tensor, torch.Tensor]:
    """The example drawing EXAMPLES/NAME.png as the net's input (1, 3, 32, 32), and its label (1,)."""
    from .inference import to_tensor

    if name not in classes:
        raise UserError(f"no class {name!r} for the example drawing; the classes are {list(classes)}")
    return to_tensor(EXAMPLES / f"{name}.png"), torch.tensor([list(classes).index(name)])


class GuidedRun:
    """One guided experiment executing on a Session or TwinSession. `advance` runs its phases a few steps at a time
    (the app redraws its charts in between); `records` keeps what each finished phase found, as plain data."""

    def __init__(self, experiment_id: str, fast: bool = False, session=None, *, device="auto", precision="auto"):
        """`session`: the learner's own, reset to the experiment's settings; None: a new one (device, precision)."""
        self.experiment = get(experiment_id)
        self.fast = bool(fast)
        self.setup = self.experiment.fast if fast else self.experiment.full
        self.session = prepare(self.experiment, self.setup, session, device, precision)
        self.records: list[dict] = []  # one per finished phase: {"phase": index, "kind", "value", "step", ...}
        self._next = 0  # index of the phase to run next
        self._train = None  # a train phase under way: (its record so far, a snapshot of the weights at its start)

    @property
    def done(self) -> bool:
        return self._next >= len(self.setup.phases)

    @property
    def nets(self) -> dict[str, Session]:
        return self.session.twins if self.experiment.twin else {"net": self.session}

    def history(self):
        """The Session's History, or {"residual": History, "plain": History}: what charts.live_figures takes."""
        return self.session.histories if self.experiment.twin else self.session.history

    def progress(self) -> dict:
        attempted = sum(r["value"] for r in self.records if r["kind"] == "train")
        attempted += self._train[0]["attempted"] if self._train else 0
        return {
            "experiment": self.experiment.id,
            "phase": self._next,  # index of the phase under way or next
            "phases": len(self.setup.phases),
            "steps": attempted,  # training steps attempted so far
            "total": self.setup.steps,
            "done": self.done,
            "last": self.records[-1] if self.records else None,  # the latest finished phase's record
        }

    def advance(self, max_steps: int = 10) -> dict:
        """Run phases until `max_steps` training steps were attempted, a measurement (lesions, gradients) was
        taken, or the experiment is done; returns progress() for the app to show."""
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1; got {max_steps}")
        taken = 0
        with self.session.lock:
            while not self.done and taken < max_steps:
                kind, value = self.setup.phases[self._next]
                if kind == "train":
                    taken += self._train_some(int(value), max_steps - taken)
                    continue
                self._finish({"kind": kind, "value": value, "step": self.session.step_count, **self._do(kind, value)})
                if kind in ("lesions", "gradients"):  # each takes about as long as a few steps: report it now
                    break
        return self.progress()

    def finish(self, progress=None, chunk: int = 10) -> "GuidedRun":
        """Run to the end, calling `progress(report)` after every `chunk` steps; returns self."""
        while not self.done:
            report = self.advance(chunk)
            if progress is not None:
                progress(report)
        return self

    def _train_some(self, total: int, budget: int) -> int:
        if self._train is None:
            start = {"kind": "train", "value": total, "step": self.session.step_count, "attempted": 0, "done": 0}
            # float tensors only: BN's step counters move by one per step and say nothing about the weights
            tensors = [t for s in self.nets.values() for t in (*s.model.parameters(), *s.model.buffers())]
            weights = [t.detach() for t in tensors if t.is_floating_point()]
            self._train = ({**start, "rejected": 0, "messages": []}, Snapshot(weights))
        record, snapshot = self._train
        n = min(budget, total - record["attempted"])
        reports = self.session.step(n)
        for report in reports.values() if self.experiment.twin else [reports]:
            record["done"] += report["done"]
            record["rejected"] += report["rejected"]
            record["messages"] += report["messages"]
        record["attempted"] += n
        if record["attempted"] == total:
            # the largest change of any weight or BN statistic over the phase: 0.0 when nothing moved
            moved = torch._foreach_sub(snapshot.tensors, snapshot.copies)
            record["moved"] = max((d.abs().max().item() for d in moved), default=0.0)
            record["to"] = self.session.step_count
            self._train = None
            self._finish(record)
        return n

    def _do(self, kind: str, value) -> dict:
        session = self.session
        if kind == "shortcuts":
            session.set_shortcut(bool(value))
            return {}
        if kind == "lr":
            session.configure(lr=float(value))
            return {}
        if kind == "lesions":
            return {"lesions": session.lesions(int(value))}
        x, y = example(value, session.data.classes)  # "gradients"
        n = len(session.shortcuts)
        on, off = session.gradients(x, y, [True] * n), session.gradients(x, y, [False] * n)
        return {k: {"loss": g["loss"], "grad_norm": g["grad_norm"]} for k, g in (("on", on), ("off", off))}

    def _finish(self, record: dict):
        self.records.append({"phase": self._next, **record})
        self._next += 1

    def data(self) -> dict:
        """The run as plain data: what effect() reads. Histories as lists of records (shared, not copied)."""

        def plain(h: History) -> dict:
            return {"steps": h.steps, "evals": h.evals, "events": h.events}

        history = self.history()
        return {
            "experiment": self.experiment.id,
            "fast": self.fast,
            "done": self.done,
            "classes": len(next(iter(self.nets.values())).data.classes),
            "setup": asdict(self.setup),
            "records": self.records,
            "history": {k: plain(h) for k, h in history.items()} if self.experiment.twin else plain(history),
        }


def run(experiment_id: str, fast: bool = False, progress=None, *, device="auto", precision="auto") -> dict:
    """Execute an experiment headless from scratch (seeded): its effect(). `progress(report)` every 10 steps."""
    return effect(experiment_id, GuidedRun(experiment_id, fast, device=device, precision=precision).finish(progress))


# --- reading the claim off the run ------------------------------------------------------------------------------------
def before_after(history, step: int, k: int = 20) -> dict:
    """Around a shortcut switch made after `step` steps: the mean over the k step records before it (up to `step`)
    and the k after, and after/before, of the loss, the batch accuracy and each layer's gradient norm.

    `history`: a History, or {"steps": [records]}. Returns {"step", "k", "counts": [before, after], "loss": {"before",
    "after", "ratio"}, "acc": {...}, "grad_norm": {layer: {...}}}; a ratio is None where the mean before is 0 (a
    projection whose shortcut was off)."""
    records = history["steps"] if isinstance(history, dict) else history.steps
    before = [r for r in records if r["step"] <= step][-k:]
    after = [r for r in records if r["step"] > step][:k]
    if not before or not after:
        raise UserError(
            f"before/after step {step} needs training steps on both sides: {len(before)} before, {len(after)} after"
        )

    def pair(get) -> dict:
        b, a = fmean(get(r) for r in before), fmean(get(r) for r in after)
        return {"before": b, "after": a, "ratio": a / b if b else None}

    layers = [name for name in before[-1]["grad_norm"] if name in after[0]["grad_norm"]]
    return {
        "step": step,
        "k": k,
        "counts": [len(before), len(after)],
        "loss": pair(lambda r: r["loss"]),
        "acc": pair(lambda r: r["acc"]),
        "grad_norm": {name: pair(lambda r, name=name: r["grad_norm"][name]) for name in layers},
    }


def _tail(steps: list[dict], key: str, k: int) -> float:
    return fmean(r[key] for r in steps[-k:])


def _shortcuts_off(data: dict, k: int) -> dict:
    switch = next(r for r in data["records"] if r["kind"] == "shortcuts")
    ba = before_after(data["history"], switch["step"], k)
    before, after = ba["loss"]["before"], ba["loss"]["after"]
    chance_loss = math.log(data["classes"])  # cross-entropy of a uniform guess: where training started
    return {
        "k": k,
        "loss_before": before,
        "loss_after": after,
        "loss_ratio": ba["loss"]["ratio"],
        "loss_end": _tail(data["history"]["steps"], "loss", k),
        "chance_loss": chance_loss,
        "undone": (after - before) / max(chance_loss - before, 1e-3),  # 1: back at chance; 0: nothing lost
        "learned": before / chance_loss,
        "stem_ratio": ba["grad_norm"]["stem"]["ratio"],
        "fc_ratio": ba["grad_norm"]["fc"]["ratio"],
    }


def _plain_vs_residual(data: dict, k: int) -> dict:
    res, plain = data["history"]["residual"]["steps"], data["history"]["plain"]["steps"]
    chance_loss = math.log(data["classes"])  # cross-entropy of a uniform guess
    numbers = {
        "k": k,
        "res_loss": _tail(res, "loss", k),
        "res_acc": _tail(res, "acc", k),
        "plain_loss": _tail(plain, "loss", k),
        "plain_acc": _tail(plain, "acc", k),
        "chance_loss": chance_loss,
    }
    numbers["acc_ratio"] = numbers["res_acc"] / max(numbers["plain_acc"], 1e-3)
    numbers["plain_chance"] = numbers["plain_loss"] / chance_loss  # 1: the plain twin still guesses
    return numbers


def _lesion(data: dict, k: int) -> dict:
    lesions = next(r for r in data["records"] if r["kind"] == "lesions")["lesions"]
    chance = 1 / data["classes"]
    numbers = {"chance": chance}
    for net, key in (("residual", "res"), ("plain", "plain")):
        intact, lesioned = lesions[net][0]["acc"], fmean(row["acc"] for row in lesions[net][1:])
        numbers[f"{key}_intact"], numbers[f"{key}_lesioned"] = intact, lesioned
        # the share of what the net learned (its accuracy above chance) that survives a lesion, on average
        numbers[f"{key}_kept"] = max(lesioned - chance, 0.0) / max(intact - chance, 1e-3)
    numbers["kept_ratio"] = numbers["res_kept"] / max(numbers["plain_kept"], 0.01)  # "kept nothing" caps at 100x
    numbers["plain_learned"] = numbers["plain_intact"] / chance  # the plain net must have learned to lose anything
    return numbers


def _lr_1000(data: dict, k: int) -> dict:
    records = data["records"]
    big = next(i for i, r in enumerate(records) if r["kind"] == "lr" and r["value"] > 1)
    first, at_big, after = records[big - 1], records[big + 1], records[big + 3]  # train, lr, train, lr, train
    return {
        "rejected": at_big["rejected"],
        "attempted": at_big["attempted"],
        "all_rejected": at_big["rejected"] / at_big["attempted"],
        "moved": at_big["moved"],
        "moved_before": first["moved"],
        "resumed": after["done"],
        "all_resumed": after["done"] / after["attempted"],
        "message": at_big["messages"][0] if at_big["messages"] else "",
    }


def _drawing_gradients(data: dict, k: int) -> dict:
    record = next(r for r in data["records"] if r["kind"] == "gradients")
    on, off = record["on"]["grad_norm"], record["off"]["grad_norm"]
    last = [name for name in on if name.endswith(".conv2")][-1]  # the last conv on the longest path
    return {
        "stem_on": on["stem"],
        "stem_off": off["stem"],
        "stem_ratio": off["stem"] / on["stem"],
        "spread_on": on["stem"] / on[last],
        "spread_off": off["stem"] / off[last],
        "spread_ratio": (off["stem"] / off[last]) / (on["stem"] / on[last]),
        "loss": record["on"]["loss"],
    }


_NUMBERS = {
    "shortcuts_off": _shortcuts_off,
    "plain_vs_residual": _plain_vs_residual,
    "lesion": _lesion,
    "lr_1000": _lr_1000,
    "drawing_gradients": _drawing_gradients,
}
_VERDICT = {
    True: Text("The claim holds.", "结论成立。"),
    False: Text("The claim does not hold this time.", "这次结论不成立。"),
}


def effect(experiment_id: str, run) -> dict:
    """The experiment's claim, computed from a finished run (a GuidedRun or its data()): {"experiment", "fast",
    "holds", "value", "threshold" (the headline check's), "checks": [{"what", "op", "threshold", "value", "holds"}],
    "numbers": {...}, "readout": {"en", "zh"}}: a line with the numbers and the verdict."""
    experiment = get(experiment_id)
    data = run.data() if isinstance(run, GuidedRun) else run
    if data["experiment"] != experiment_id:
        raise ValueError(f"this is a run of {data['experiment']!r}, not of {experiment_id!r}")
    if not data["done"]:
        raise UserError("the experiment has not finished yet: run it to the end first")
    setup = Setup(**{**data["setup"], "phases": tuple(tuple(p) for p in data["setup"]["phases"])})
    numbers = _NUMBERS[experiment_id](data, setup.window)
    checks = []
    for c in experiment.checks:
        value = numbers[c.what]
        holds = value >= c.threshold if c.op == ">=" else value <= c.threshold
        checks.append({**asdict(c), "value": value, "holds": bool(holds)})
    holds = all(c["holds"] for c in checks)
    values = {**setup.values(), **numbers}
    line = {lang: getattr(experiment.readout, lang).format(**values) for lang in ("en", "zh")}
    verdict = _VERDICT[holds]
    readout = {"en": f"{line['en']} {verdict.en}", "zh": line["zh"] + verdict.zh}  # no space between Chinese sentences
    return {
        "experiment": experiment_id,
        "fast": data["fast"],
        "holds": holds,
        "value": checks[0]["value"],
        "threshold": checks[0]["threshold"],
        "checks": checks,
        "numbers": numbers,
        "readout": readout,
    }


# --- recordings ---------------------------------------------------------------------------------------------------
def machine() -> dict:
    """What a recording ran on: the CPU's model and the flags that decide its speed (AMX and AVX512-BF16: bf16)."""
    import datetime
    import os

    cpu, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        cpu = re.search(r"^model name\s*:\s*(.+)$", info, re.M).group(1).strip()
        flags = set(re.search(r"^flags\s*:\s*(.+)$", info, re.M).group(1).split())
    except (OSError, AttributeError):  # not Linux, or an unusual cpuinfo: the rest still says enough
        pass
    return {
        "cpu": cpu,
        "amx": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "avx2": "avx2" in flags,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _round(v, digits: int = 4):
    """Floats to `digits` significant digits, through dicts and lists: a recording's size is mostly its numbers."""
    if isinstance(v, float):
        return float(f"{v:.{digits}g}") if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _round(x, digits) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_round(x, digits) for x in v]
    return v


def _columns(h: dict, points: int) -> dict:
    """A history's step records, thinned to `points`, as columns: {"step": [...], "loss", "acc", "grad_norm":
    {layer: [...]}}; evaluations and events as they are."""
    steps = thin(h["steps"], points)
    layers = list(steps[0]["grad_norm"]) if steps else []
    return {
        "step": [r["step"] for r in steps],
        "loss": [r["loss"] for r in steps],
        "acc": [r["acc"] for r in steps],
        "grad_norm": {name: [r["grad_norm"][name] for r in steps] for name in layers},
        "evals": h["evals"],
        "events": h["events"],
    }


def recording(run: GuidedRun, effect_: dict, command: str, seconds: float, points: int = 300) -> dict:
    """A finished run as a small JSON-able dict: setup, effect, phase records, curves thinned to `points`, the
    command that made it and the machine it ran on. load_recorded() reads it back."""
    data = run.data()
    h = data["history"]
    history = {net: _columns(x, points) for net, x in h.items()} if run.experiment.twin else _columns(h, points)
    session = next(iter(run.nets.values()))
    return _round(
        {
            "experiment": data["experiment"],
            "fast": data["fast"],
            "setup": data["setup"],
            "effect": effect_,
            "records": data["records"],
            "history": history,
            "command": command,
            "machine": {**machine(), "device": str(session.device), "precision": session.precision},
            "seconds": seconds,
        }
    )


def load_recorded(experiment_id: str, folder: Path = RECORDED) -> dict:
    """A recording (recording()'s dict), its history turned back into History objects, so the app charts a
    recorded run with the functions it charts a live one with (charts.live_figures, loss_figure, ...)."""
    import json

    path = Path(folder) / f"{get(experiment_id).id}.json"
    if not path.exists():
        raise UserError(f"no recorded run of {experiment_id!r} in {folder}")
    recorded = json.loads(path.read_text())

    def history(columns: dict) -> History:
        h = History(max(2, len(columns["step"])))
        names = list(columns["grad_norm"])
        h.steps = [
            {"step": s, "loss": loss, "acc": acc, "grad_norm": {n: columns["grad_norm"][n][i] for n in names}}
            for i, (s, loss, acc) in enumerate(zip(columns["step"], columns["loss"], columns["acc"]))
        ]
        h.evals, h.events = columns["evals"], columns["events"]
        return h

    h = recorded["history"]
    recorded["history"] = {n: history(x) for n, x in h.items()} if "step" not in h else history(h)
    return recorded
