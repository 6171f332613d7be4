"""ResNet Playground: train a residual network in the browser, switch its shortcuts live, and watch why they matter.

UI only: every number comes from the `resnet` package; the handlers here find the learner's session, call it,
and lay out what it returns. `python app.py` serves it (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are honoured).
"""

import base64
import binascii
import contextvars
import functools
import gc
import hashlib
import importlib.util
import inspect
import logging
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import plotly
import plotly.graph_objects as go
import torch

from resnet import charts, checkpoint, front, graphstep, guided, inference, runlog, zipdata
from resnet.data import DATASETS, DataError
from resnet.errors import UserError
from resnet.model import ARCHITECTURES, cifar_config
from resnet.model import architecture as architecture_config
from resnet.pool import PLAY, for_device
from resnet.session import History, Session, TrainConfig, pick_device
from resnet.twin import TwinSession

ASSETS = Path(__file__).parent / "assets"
PRETRAINED = ASSETS / "shapes-resnet"  # made by `python -m resnet train --steps 1500 --save assets/shapes-resnet`
DOWNLOADS = Path(tempfile.gettempdir()) / "resnet-playground"  # learners' model downloads, a folder each
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"  # served locally: works offline
# learners training at once (a visitor who only looks or predicts takes no seat); the next one is asked to wait.
# A GPU serves a room of 100 at step granularity; 2 CPU cores answer 30, slowly (README: the load test)
MAX_SESSIONS = int(os.environ.get("PLAYGROUND_MAX_SESSIONS", 128 if torch.cuda.is_available() else 32))
# app processes behind one port (resnet.front): on a GPU, one process's GIL, not the card, limits a room. "auto"
# (front.default_processes): 8 on an H200's 16 cores cut a 100-learner room's Step p95 to a third (README); 1 on a CPU
PROCESSES = front.processes_from(os.environ.get("PLAYGROUND_PROCESSES", "auto"), torch.cuda.is_available())
BEHIND_FRONT = bool(os.environ.get("PLAYGROUND_FRONT_PID"))  # one of a front's processes: it holds a share of seats
IDLE_SECONDS = float(os.environ.get("PLAYGROUND_IDLE_SECONDS", 1800))  # an untouched session is freed after this
RELOAD_GRACE_SECONDS = 120  # a closed page's session waits this long for the same browser to come back
PLAY_SECONDS = float(os.environ.get("PLAYGROUND_PLAY_SECONDS", 600))  # Play pauses by itself after this long
LABEL_SECONDS = 1.0  # during a run, the prediction beside the charts is made again at most this often (and at its end)
GUIDED_FAST = os.environ.get("PLAYGROUND_GUIDED_FAST") == "1"  # guided experiments at the tests' (fast) settings
SKETCH_SIZE = 280  # px of the drawing pad, shown at 100%
log = logging.getLogger("playground")

LEARN_EN = """
### Residual connections, in four points (the course notebook's words)
- A residual connection adds a block's **input directly to its output**: `out = relu(F(x) + x)`.
- The notebook says it eases the **vanishing gradient** problem, the `+ x` passing the gradient back unchanged.
  What this network shows is different: see claims 1 and 5 below.
- Information can **skip layers**: it does not have to pass through every block.
- Deep networks **train faster and better**: a block only has to learn the residual `F(x) = H(x) - x`.

### The notebook's code, and its bug
The notebook's `ResidualBlock` builds `self.shortcut` (a 1x1 conv + BN for the 64→128 block) but `forward` never
uses it: the `downsample` argument does that work, and `shortcut`'s 8,576 parameters sit idle. Here each block has
one `shortcut` (identity, or a projection where the shape changes) that you can switch off: the block becomes the
"plain" `relu(F(x))` with the same weights.

### What we measured: each claim one click away
**▶ Check it** opens the claim's experiment in **Guided experiments**: it runs there, is checked on its run's own
numbers, and a run recorded on a 2-vCPU Intel Xeon shows beside yours.
"""

LEARN_ZH = (  # one line per paragraph: a line break inside a Chinese one shows as a space
    "\n"
    "### 残差连接的四个要点（课程笔记的说法）\n"
    "- 残差连接把残差块的**输入直接加到输出上**：`out = relu(F(x) + x)`。\n"
    "- 笔记说它能缓解深层网络中的**梯度消失**问题：`+ x` 让梯度原样传回。这个网络表现出来的却不是这样：见"
    "下面第 1 条和第 5 条。\n"
    "- 信息可以**跳过若干层**传递，不必经过所有层。\n"
    "- 提高深层神经网络的**训练效率**：每个块只需学习残差 `F(x) = H(x) - x`。\n"
    "\n"
    "### 笔记中的代码和它的错误\n"
    "笔记里的 `ResidualBlock` 构建了 `self.shortcut`（64→128 块中的 1×1 卷积加批归一化），但 `forward` 从"
    "未使用它：真正起作用的是参数 `downsample`，`shortcut` 的 8,576 个参数闲置。这里每个块只有一个可以关"
    '闭的 `shortcut`（恒等映射，或在形状变化处的投影）；关闭后，同样的权重变成"普通"块 `relu(F(x))`。\n'
    "\n"
    "### 我们测到的结果：每一条都只需点一下\n"
    "**▶ 检验它** 会在 **引导实验** 里打开这条结论的实验：在那里运行，用这次运行自己的数字检验，旁边还有"
    "一次在 2 个虚拟核的 Intel Xeon 上录制的运行。\n"
)

# Learn's measured claims, each beside a button that opens its guided experiment ("predict": the Predict tab)
LEARN_CLAIMS = {
    "shortcuts_off": (
        "1. **Shortcuts off, mid-training (ResNet-56).** No weight changes, yet the loss jumps almost all the way back "
        "to chance (recorded: 0.68 → 2.23, chance 2.30). The gradients do **not** vanish: the stem's grows ×3.6. With "
        "batch norm, a deep plain net's trouble is not small gradients (He et al. 2016 saw healthy ones too).",
        "1. **训练中途关掉残差连接（ResNet-56）。** 权重一个都没变，损失却几乎跳回随机猜测的水平"
        "（录制结果：0.68 → 2.23，随机猜测为 2.30）。梯度并**没有**消失：stem 层的梯度范数变为 3.6 倍。"
        "有了批归一化，深层普通网络的问题不在于梯度太小（何恺明等人 2016 年也看到梯度正常）。",
    ),
    "plain_vs_residual": (
        "2. **Plain vs residual at 56 layers**, same weights, same batches: the plain net stays at chance (loss 2.30, "
        "11% right) while the residual net learns (66% right after 120 steps): ×6.",
        "2. **56 层的普通网络与残差网络**，相同的权重，相同的批次：普通网络停在随机猜测"
        "（损失 2.30，答对 11%），残差网络在学习（120 步后答对 66%），相差 6 倍。",
    ),
    "lesion": (
        "3. **Remove one block** at test time (ResNet-20). The residual net keeps 45% of its above-chance accuracy on "
        "average, the plain net 6% (×7).",
        "3. **测试时去掉一个块**（ResNet-20）。残差网络平均保留了高于随机猜测部分的 45%，普通网络只保留 6%（7 倍）。",
    ),
    "lr_1000": (
        "4. **A learning rate of 1000**: the step is rejected and no weight moves (largest change: 0).",
        "4. **学习率 1000**：这一步被拒绝，没有任何权重改变（最大变化为 0）。",
    ),
    "drawing_gradients": (
        "5. **One drawing's gradients, shortcuts on vs off** (the example 'star', a fresh ResNet-56, no step): the "
        "stem's gradient is ×174 larger with shortcuts off. Through 56 plain layers it explodes rather than vanishes.",
        "5. **一张图的梯度，残差连接开与关**（示例中的星形，一个新初始化的 ResNet-56，不训练）："
        "关掉残差连接后，stem 层的梯度大了 174 倍。穿过 56 个普通层，梯度不是消失，而是爆炸。",
    ),
    "predict": (
        "6. **Try it yourself**: draw a shape in Predict, then switch the shortcuts off (Training, on top): the "
        "prediction changes although no weight did.",
        "6. **自己试试**：在“预测”里画一个图形，然后关闭残差连接（上方的“训练”）：权重没变，预测却变了。",
    ),
}

I18N = gr.I18n(
    en={
        "learn_text": LEARN_EN,
        **{f"learn_{k}": en for k, (en, _) in LEARN_CLAIMS.items()},
        "check_it": "▶\u00a0Check it",
        "guided_stop": "■\u00a0Stop",
        "open_predict": "Open Predict",
        "start_here": "▶ Start here: five claims about shortcuts, each checked in one click",
        "guided": "Guided experiments",
        "guided_pick": "Pick a claim to check",
        "guided_run": "▶ Run this experiment",
        **{f"guided_{e.id}": e.texts(fast=GUIDED_FAST)["title"]["en"] for e in guided.EXPERIMENTS.values()},
        "title": "# ResNet Playground\nTrain a residual network, switch its shortcuts off and on while it learns, "
        "and watch the gradients. Draw a shape to see what it thinks.",
        "train": "Training",
        "dataset": "Dataset",
        "architecture": "Network",
        "seed": "Seed",
        "reset": "Reset",
        "on_reset": "applies when you press Reset",
        "twin_on_reset": "used by the first Step ×N or Play, then by Reset",
        "optimizer": "Optimizer",
        "lr": "Learning rate",
        "batch": "Batch size",
        "step": "Step",
        "step_n": "Step\u00a0×N",  # no break: on a phone it wrapped onto two lines
        "n": "N",
        "play": "▶ Play",
        "pause": "❚❚\u00a0Pause",  # no break: on a phone the button wrapped its icon onto a line of its own
        "shortcuts": "Shortcuts",
        "all_shortcuts": "All shortcuts on",
        "block_shortcuts": "Shortcut of each block",
        "predict": "Predict",
        "draw": "Draw a shape",
        "upload": "Upload, paste or webcam",
        "clear": "Clear drawing",
        "prediction": "What the network sees",
        "features": "What each block sees",
        "teach": "Teach it your image",
        "true_label": "This image is a…",
        "teach_image": "The image it will learn from",
        "teach_step": "Take one step on it (alone)",
        "mix": "Mix it into the next 20 batches",
        "compare": "Gradients: shortcut on vs off",
        "layer": "Layer",
        "learn": "Learn",
        "status": "Status",
        "examples": "Examples",
        "data_model": "Your data, your model",
        "zip": "A .zip of class folders (cat/…, dog/…)",
        "use_zip": "Train on my zip",
        "download": "Download model",
        "download_run": "Download my run (CSV)",
        "adam": "Adam",
        "sgd": "SGD (momentum 0.9)",
        "notebook_net": "notebook net (0.6M)",
        "grad_tensor": "The chosen layer's weight gradient",
        "grad_norms": "Gradient norm of every layer",
        "run_file": "Your run: loss, accuracy, gradient norms, events per step",
        "model_file": "Model file (.zip)",
        "repo": "Hugging Face repo id",
        "load": "Load model (file or repo)",
        "token": "Hub write token (used once, never stored)",
        "push": "Push model to my Hub repo",
        "twins": "Residual vs plain",
        "lesion": "Lesions: bypass one block at a time (held-out accuracy)",
        "twins_intro": "Two networks start from **the same weights** and train on **the same batches**: one with "
        "shortcuts, one without (its *plain twin*). Go deeper (ResNet-56) and the plain twin stops "
        "learning: He et al.'s degradation problem. Below: each layer's gradient norm against its "
        "depth, and how much gradient reaches each block's input through its shortcut vs its "
        "residual branch.",
    },
    zh={
        "learn_text": LEARN_ZH,
        **{f"learn_{k}": zh for k, (_, zh) in LEARN_CLAIMS.items()},
        "check_it": "▶\u00a0检验它",
        "guided_stop": "■\u00a0停止",
        "open_predict": "打开“预测”",
        "start_here": "▶ 从这里开始：关于残差连接的五条结论，每条点一下就能检验",
        "guided": "引导实验",
        "guided_pick": "选一个要验证的结论",
        "guided_run": "▶ 运行这个实验",
        **{f"guided_{e.id}": e.texts(fast=GUIDED_FAST)["title"]["zh"] for e in guided.EXPERIMENTS.values()},
        "common.complete": "完成",  # gradio's own zh locale lacks this key (its File and progress widgets use it)
        "title": "# 残差网络游乐场\n训练一个残差网络，在它学习时随时开关残差连接（shortcut），观察梯度的变化。"
        "画一个图形，看看它怎么认。",
        "train": "训练",
        "dataset": "数据集",
        "architecture": "网络",
        "seed": "随机种子",
        "reset": "重置",
        "on_reset": "按“重置”后生效",
        "twin_on_reset": "第一次“走 N 步”或“播放”时使用，之后按“重置”生效",
        "optimizer": "优化器",
        "lr": "学习率",
        "batch": "批大小",
        "step": "单步",
        "step_n": "走\u00a0N\u00a0步",
        "n": "N",
        "play": "▶ 播放",
        "pause": "❚❚\u00a0暂停",
        "shortcuts": "残差连接",
        "all_shortcuts": "全部残差连接开启",
        "block_shortcuts": "每个残差块的连接",
        "predict": "预测",
        "draw": "画一个图形",
        "upload": "上传、粘贴或摄像头",
        "clear": "清空画板",
        "prediction": "网络的判断",
        "features": "每个残差块看到的特征图",
        "teach": "用你的图片教它",
        "true_label": "这张图是…",
        "teach_image": "它将学习的图片",
        "teach_step": "用它单独训练一步",
        "mix": "混入接下来的 20 个批次",
        "compare": "梯度：残差连接开启与关闭对比",
        "layer": "层",
        "learn": "学习",
        "status": "状态",
        "examples": "示例",
        "data_model": "你的数据，你的模型",
        "zip": "按类别分文件夹的 .zip（cat/…, dog/…）",
        "use_zip": "用我的 zip 训练",
        "download": "下载模型",
        "download_run": "下载我的训练记录（CSV）",
        "adam": "Adam",
        "sgd": "SGD（动量 0.9）",
        "notebook_net": "笔记中的网络（60 万）",
        "grad_tensor": "所选层的权重梯度",
        "grad_norms": "每一层的梯度范数",
        "run_file": "你的训练记录：每一步的损失、准确率、梯度范数和事件",
        "model_file": "模型文件（.zip）",
        "repo": "Hugging Face 仓库 ID",
        "load": "加载模型（文件或仓库）",
        "token": "Hub 写入令牌（只用一次，不保存）",
        "push": "推送模型到我的 Hub 仓库",
        "twins": "残差与普通对比",
        "lesion": "损伤实验：每次绕过一个残差块（留出集准确率）",
        "twins_intro": "两个网络从**相同的权重**出发，在**相同的批次**上训练：一个有残差连接，"
        "一个没有（它的*普通孪生*）。网络越深（ResNet-56），普通网络越学不动：这就是 He 等人所说的"
        "退化问题。下方：每一层的梯度范数随深度的变化，以及到达每个块输入的梯度中，"
        "经由残差连接与经由残差分支各有多少。",
    },
)

SAY = {  # what the server writes at run time, in both languages (the static labels are in I18N)
    "en": {
        "oom": "The accelerator ran out of memory: try a smaller batch size.",
        "bug": "Something went wrong on the server (request {id}); your session is intact, please try again.",
        "status": "**Step {step}** · {device} ({precision}) · {depth} layers, {params:,} parameters · "
        "shortcuts on: {on}/{blocks}",
        "train": "training loss {loss:.3f}, batch accuracy {acc:.0%}",
        "held_out": "held-out accuracy {acc:.1%} at step {step}",
        "visitor": "This is the shipped model, trained before you came ({acc:.0%} of {n} held-out images right), "
        "shared by every visitor: Step, Play or a shortcut switch gives you your own copy to train; Reset, one from "
        "random weights.",
        "pretrained": "Started from a trained model: press Reset to train from random weights.",
        "block": "block {i}",
        "no_zip": "Choose a .zip of class folders first (e.g. cat/1.png, dog/2.jpg).",
        "zip_ok": "{train} training and {test} held-out images in {classes} classes.",
        "no_model": "Upload a checkpoint zip (from Download) or type a Hub repo id.",
        "no_push": "Type your repo id (you/name) and a write token from huggingface.co/settings/tokens.",
        "pushed": "Pushed to {url}",
        "numbers": "Type a number for the learning rate and the batch size.",
        "bad_n": "N must be a whole number from 1 to 10000.",
        "timeout": "Paused after {minutes:.0f} minutes of play; press Play to go on.",
        "replaced": "Stopped here: a newer Play or Step ×N of yours (in this tab or another) trains this network now.",
        "no_image": "Draw or upload an image first (Predict tab).",
        "no_label": "Choose the class this image shows.",
        "taught": "Step {step} on your image alone, labelled **{label}**: loss {loss:.4f} "
        "(the notebook's one step on its one input, class 3, gave 2.2598). Measured in training mode, as the "
        "notebook's step is: BatchNorm normalises this one image by its own statistics, so the loss can be high "
        "even where the prediction (evaluation mode) is sure.",
        "mixed": "Your **{label}** will be in each of the next 20 training batches: press Step ×N or Play.",
        "compared": "Loss with shortcuts on: {on:.4f} · off: {off:.4f} (no step taken).",
        "twin_status": "**Step {step}** · {depth} layers, residual vs plain, same initial weights, same batches",
        "twin_line": "{name}: training loss {loss:.3f}{held}",
        "twin_held": ", held-out accuracy {acc:.1%}",
        "residual": "residual",
        "plain": "plain",
        "this_step": "this step",
        "on": "shortcuts on",
        "off": "shortcuts off",
        "setup": "What it sets up:",
        "watch": "What to watch:",
        "expect": "What to expect:",
        "no_recording": "No recorded run of this experiment is shipped.",
        "recorded": "**Recorded run** (below), on {cpu}, {date}, in {seconds:.0f} s: {readout}  \n"
        "(`python -m resnet.experiment --guided` runs them all again.)",
        "guided_hint": "Press ▶ Run this experiment:<br>your run draws here",
        "guided_progress": "Running: {steps} of {total} training steps, phase {phase} of {phases}.",
        "guided_stopped": "Stopped. Run it again to start over.",
        "guided_replaced": "Stopped: an experiment was started again (in this tab or another).",
        "twin_idle": "Pick a depth, then Step ×N or ▶ Play: the twins are built at the first click.",
        "not_base64": "The image must be the file's bytes, base64-encoded.",
        "too_big": "The image is larger than {mb} MB.",
        "too_many_layers": "A drawing of {n} layers: at most {most} are read.",
        "bad_tool_args": "layers must be 6n+2 from 8 to 56 (8, 14, 20, 32, 44, 56) and steps from 1 to {most}.",
    },
    "zh": {
        "oom": "加速器内存不足：请减小批大小。",
        "bug": "服务器出错了（请求编号 {id}）；你的训练没有受影响，请再试一次。",
        "status": "**第 {step} 步** · {device}（{precision}）· {depth} 层，{params:,} 个参数 · "
        "开启的残差连接：{on}/{blocks}",
        "train": "训练损失 {loss:.3f}，批准确率 {acc:.0%}",
        "held_out": "留出集准确率 {acc:.1%}（第 {step} 步）",
        "visitor": "这是随应用提供的模型，在你来之前已训练好（{n} 张留出图像答对 {acc:.0%}），所有访客共用："
        "单步、播放或开关残差连接会给你一份自己的副本来训练；重置则从随机权重开始。",
        "pretrained": "从已训练的模型开始：按“重置”从随机权重开始训练。",
        "block": "残差块 {i}",
        "no_zip": "请先选择一个按类别分文件夹的 .zip（例如 cat/1.png、dog/2.jpg）。",
        "zip_ok": "共 {classes} 类：{train} 张训练图片，{test} 张留出图片。",
        "no_model": "请上传一个模型 zip（来自“下载模型”），或输入一个 Hub 仓库 ID。",
        "no_push": "请输入你的仓库 ID（你/名称）和一个写入令牌（huggingface.co/settings/tokens）。",
        "pushed": "已推送到 {url}",
        "numbers": "请为学习率和批大小输入数字。",
        "bad_n": "N 必须是 1 到 10000 之间的整数。",
        "timeout": "已连续播放 {minutes:.0f} 分钟，自动暂停；按“播放”继续。",
        "replaced": "已在此停止：你新开始的“播放”或“走 N 步”（本页或另一个标签页）正在训练这个网络。",
        "no_image": "请先画一个图形或上传一张图片（“预测”标签页）。",
        "no_label": "请选择这张图片所属的类别。",
        "taught": "只用你的图片（标注为 **{label}**）训练了一步，即第 {step} 步：损失 {loss:.4f}"
        "（笔记中用它唯一的输入、类别 3 训练一步，损失是 2.2598）。这是训练模式下的损失，和笔记中那一步一样："
        "BatchNorm 用这一张图片自己的统计量做归一化，所以即使预测（评估模式）很有把握，损失也可能很高。",
        "mixed": "你的 **{label}** 会出现在接下来 20 个训练批次的每一批中：按“走 N 步”或“播放”。",
        "compared": "残差连接开启时的损失：{on:.4f} · 关闭时：{off:.4f}（没有训练）。",
        "twin_status": "**第 {step} 步** · {depth} 层，残差网络与普通网络，相同的初始权重，相同的批次",
        "twin_line": "{name}：训练损失 {loss:.3f}{held}",
        "twin_held": "，留出集准确率 {acc:.1%}",
        "residual": "残差网络",
        "plain": "普通网络",
        "this_step": "这一步",
        "on": "残差连接开启",
        "off": "残差连接关闭",
        "setup": "实验设置：",
        "watch": "观察哪里：",
        "expect": "预期结果：",
        "no_recording": "这个实验没有附带录制的运行。",
        "recorded": "**录制的运行**（见下图），在 {cpu} 上于 {date} 录制，用时 {seconds:.0f} 秒：{readout}  \n"
        "（`python -m resnet.experiment --guided` 会把它们全部重新运行一遍。）",
        "guided_hint": "按“▶ 运行这个实验”：<br>你的运行会画在这里",
        "guided_progress": "运行中：第 {steps}/{total} 个训练步，第 {phase}/{phases} 个阶段。",
        "guided_stopped": "已停止。再次运行会从头开始。",
        "guided_replaced": "已停止：又有一个实验开始运行了（本页或另一个标签页）。",
        "twin_idle": "选择深度，然后按“走 N 步”或“▶ 播放”：第一次点击时才会创建这两个网络。",
        "not_base64": "图片必须是文件内容的 base64 编码。",
        "too_big": "图片超过了 {mb} MB。",
        "too_many_layers": "这幅画有 {n} 个图层：最多只读取 {most} 个。",
        "bad_tool_args": "layers 必须是 8 到 56 之间的 6n+2（8、14、20、32、44、56），steps 必须在 1 到 {most} 之间。",
    },
}

# A chart that persists across updates: plotly.js draws into a fixed div and `Plotly.react` updates it in place,
# so zoom and hover survive (a gr.Plot output re-creates its chart on every streamed update). Its value is a
# charts.FigureStream text (a figure's JSON, then a patch per line) or a figure: a text that extends the last one
# is applied from where that one ended, anything else is read from its first line.
CHART_JS = r"""
const div = element.querySelector('.live-chart');
let text = null, fig = null, revision = 0;
function edit(array, e) {
  if (Array.isArray(e[0])) return e.forEach((row, i) => edit(array[i], row));
  array.length = e[0];
  for (const v of e[1]) array.push(v);
}
function apply(line) {
  const patch = JSON.parse(line);
  for (const [i, trace] of Object.entries(patch.traces || {})) fig.data[i] = trace;
  for (const [i, arrays] of Object.entries(patch.arrays || {}))
    for (const [key, e] of Object.entries(arrays)) edit(fig.data[i][key], e);
  if ('layout' in patch) fig.layout = patch.layout;
}
function render() {
  if (!props.value) return;  // no figure yet: gradio's empty value is ''
  const value = typeof props.value === 'string' ? props.value : JSON.stringify(props.value);
  if (value === text) return;
  if (text !== null && value.startsWith(text) && value[text.length] === '\n') {
    value.slice(text.length + 1).split('\n').forEach(apply);
  } else {
    const [base, ...patches] = value.split('\n');
    fig = JSON.parse(base);
    patches.forEach(apply);
  }
  text = value;
  // arrays changed in place: a new datarevision makes Plotly.react redraw them. Plotly gets copies of the
  // traces and layout, so its own writes (zoom, legend clicks) stay out of the decoded figure; uirevision
  // carries them over as before.
  const layout = {...structuredClone(fig.layout || {}), datarevision: ++revision};
  // on a phone's width the toolbar would sit on the chart's title (a touch screen never hides it), and a legend
  // beside the plot would take half its width: no toolbar, and the legend in rows under the plot, the chart that
  // much taller (a legend shows for two or more named lines, heatmaps aside, unless the figure says otherwise)
  const phone = globalThis.matchMedia?.('(max-width: 600px)').matches;  // (no matchMedia: the tests' node)
  if (phone) {
    const named = fig.data.filter(t => t.name && (t.showlegend ?? t.type !== 'heatmap')).length;
    const rows = (layout.showlegend ?? named > 1) ? Math.ceil(named / 2) : 0;
    layout.height = 300 + 22 * rows;  // plotly does not measure its div again on a react: both, told
    div.style.height = `${layout.height}px`;
    layout.margin = {...layout.margin, b: (layout.margin?.b ?? 35) + 22 * rows + (rows ? 15 : 0)};
    layout.legend = {...layout.legend, orientation: 'h', x: 0, xanchor: 'left', yref: 'container', y: 0,
                     yanchor: 'bottom'};
  }
  // 'hover', plotly's own default, on a desktop: true would show the toolbar always, over the titles
  const config = {responsive: true, displaylogo: false, displayModeBar: phone ? false : 'hover'};
  Plotly.react(div, fig.data.map(t => ({...t})), layout, config);
}
render();
watch('value', render);
"""


def chart_row(*elem_ids: str) -> list[gr.HTML]:
    """Live charts side by side; each in a column at least 340 px wide, so a phone (390 px) wraps them one per row
    with room for their titles and axis labels."""
    charts_ = []
    with gr.Row():
        for elem_id in elem_ids:
            with gr.Column(min_width=340):
                charts_.append(live_chart(elem_id))
    return charts_


OPTIMIZER_CHOICES = [(I18N("adam"), "adam"), (I18N("sgd"), "sgd")]


def architecture_choices() -> list[tuple]:
    """Network names as the paper has them; the notebook's net, described in the learner's language."""
    return [(I18N("notebook_net") if n == 0 else name, name) for name, n in ARCHITECTURES.items()]


def live_chart(elem_id: str) -> gr.HTML:
    return gr.HTML(
        value=None,
        html_template='<div class="live-chart" style="width:100%;height:300px"></div>',
        js_on_load=CHART_JS,
        head=f'<script src="gradio_api/file={PLOTLY_JS}"></script>',  # relative: under the front's /k/ too
        elem_id=elem_id,
        padding=False,
    )


def new_session(dataset: str = "shapes", architecture: str | None = None, seed: int = 0, data=None, **train) -> Session:
    return Session(TrainConfig(dataset=dataset, seed=seed, **train), architecture_config(architecture), data=data)


@functools.cache
def pretrained() -> checkpoint.HubResNet | None:
    """The shipped model, read from disk once; sessions copy its weights and never write into it."""
    return checkpoint.load(PRETRAINED) if (PRETRAINED / "model.safetensors").exists() else None


def first_session() -> Session:
    """A new learner starts from the shipped pre-trained model, so Predict means something at once;
    Reset starts from random weights."""
    model = pretrained()
    return checkpoint.session_from(model) if model is not None else new_session()


DEVICE = pick_device()
SEATS = math.ceil(MAX_SESSIONS / PROCESSES) if BEHIND_FRONT else MAX_SESSIONS
POOL = for_device(DEVICE, first_session, SEATS, IDLE_SECONDS)


def user_errors(fn):
    """Turn what a user can get wrong into a message in the UI, in the learner's language. On a page it is a toast
    and the event's outputs stay as they were (an error would put a red badge on each of them: most of the training
    panel); an API caller gets it as an error. Anything else is a bug or a library's internals: logged in full with a
    request id, and only the id is shown, so the learner can quote it. Also sets LANG for the handler from its
    request, so what it shows follows the browser's language."""

    def explain(e: Exception) -> gr.Error:
        # each message in one line of the log, or the bug's traceback once (ours): gradio would print a traceback
        # of its queue for every error shown, a learner's typo as loud as a bug
        if isinstance(e, gr.Error):
            return e
        if isinstance(e, UserError):  # bad image, setting, dataset or checkpoint; a full room
            return gr.Error(e.text(LANG.get()), print_exception=False)
        if isinstance(e, torch.OutOfMemoryError):
            graphstep.empty_cache()  # release what the failed step held; the session's weights are untouched
            log.warning("%s ran out of the device's memory: %s", fn.__name__, str(e).splitlines()[0][:200])
            return gr.Error(say("oom"), print_exception=False)
        request_id = uuid.uuid4().hex[:8]
        log.exception("request %s: handler %s failed", request_id, fn.__name__)
        return gr.Error(say("bug", id=request_id), print_exception=False)

    def said(e: Exception, request: gr.Request | None) -> bool:
        """A learner's mistake, told to their page in a toast (True); else the caller raises explain(e)."""
        if isinstance(e, UserError):
            log.info("%s refused: %s", fn.__name__, e.text("en"))
            if on_page(request):
                gr.Warning(e.text(LANG.get()))
                return True
        return False

    def request_of(args, kwargs) -> gr.Request | None:
        return next((a for a in [*args, *kwargs.values()] if isinstance(a, gr.Request)), None)

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*args, **kwargs):
            request = request_of(args, kwargs)
            lang, steps = lang_of(request), fn(*args, **kwargs)
            while True:  # gradio may resume a generator on another thread: set the language for each resumption
                token = LANG.set(lang)
                try:
                    value = next(steps)
                except StopIteration:
                    return
                except Exception as e:  # noqa: BLE001 -- see explain()
                    if not said(e, request):
                        raise explain(e) from None
                    value, steps = gr.skip(), iter(())  # the outputs as they were; the run is over
                finally:
                    LANG.reset(token)
                yield value

        return gen

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        request = request_of(args, kwargs)
        token = LANG.set(lang_of(request))
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            if said(e, request):
                return gr.skip()
            raise explain(e) from None
        finally:
            LANG.reset(token)

    return plain


def on_page(request: gr.Request | None) -> bool:
    """Whether a request comes from the app's page (which tied itself to a learner at load), not an API client."""
    return request is not None and request.session_hash in LEARNERS


LANG: contextvars.ContextVar[str] = contextvars.ContextVar("lang", default="en")  # the request's: "en" or "zh"


def lang_of(request: gr.Request | None) -> str:
    """The browser's language, as gr.I18n picks it for the page: Chinese if it asks for Chinese first."""
    accept = (request.headers.get("accept-language", "") if request is not None else "") or ""
    return "zh" if accept.strip().lower().startswith("zh") else "en"


def say(key: str, **values) -> str:
    """A message the server writes, in the request's language."""
    return SAY[LANG.get()][key].format(**values)


def refuse(key: str, **values):
    """A UserError for a mistake the app itself catches, in both languages."""
    return UserError(SAY["en"][key].format(**values), zh=SAY["zh"][key].format(**values))


# A rejected step's message, as the session writes it (resnet.session.Session._record), for the Chinese page
REJECTED = re.compile(r"step (\d+) rejected: (.+) \(lr (\S+) too large\?\); weights restored")
REJECTED_ZH = {"loss not finite": "损失不是有限值", "gradients or weights not finite": "梯度或权重不是有限值",
               "diverged": "发散"}  # fmt: skip
UPDATE_ZH = re.compile(r"an update (\d+)x the size of its layer's weights")


def in_language(message: str) -> str:
    """A training message from the session in the request's language (it writes English)."""
    found = REJECTED.fullmatch(message) if LANG.get() == "zh" else None
    if not found:
        return message
    step, reason, lr = found.groups()
    big = UPDATE_ZH.fullmatch(reason)
    reason = f"更新量是该层权重的 {big.group(1)} 倍" if big else REJECTED_ZH.get(reason, reason)
    return f"第 {step} 步被拒绝：{reason}（学习率 {lr} 太大？）；权重已恢复"


# --- what the handlers show -------------------------------------------------------------------------------------
def status_text(session: Session, report: dict | None = None) -> str:
    s, h = session.summary(), session.history
    lines = [
        say("status", step=s["step"], device=s["device"], precision=s["precision"], depth=s["depth"],
            params=s["parameters"], on=sum(s["shortcuts"]), blocks=len(s["shortcuts"]))
    ]  # fmt: skip
    if h.steps:
        lines.append(say("train", loss=h.steps[-1]["loss"], acc=h.steps[-1]["acc"]))
    if h.evals:
        lines.append(say("held_out", acc=h.evals[-1]["acc"], step=h.evals[-1]["step"]))
    if session is visitor():
        lines.append(say("visitor", **shipped_accuracy()))
    elif s["step"] == 0 and h.events and h.events[0]["kind"] == "checkpoint":
        lines.append(say("pretrained"))
    for message in (report or {}).get("messages", [])[-3:]:
        lines.append(f"⚠️ {in_language(message)}")
    return "  \n".join(lines)


def chart_values(session: Session) -> list[dict]:
    figs = charts.live_figures(session.history, revision=id(session.model))  # new model: zoom resets
    return [translated(figs[k]) for k in ("loss", "accuracy", "grad_norm", "grad_heatmap")]


def translated(figure: dict) -> dict:
    """A chart's titles, axes, legend and markers in the request's language."""
    return charts.translate(figure, LANG.get())


# recent predictions with their feature maps, per model version and image; their folder is served as it is (a
# static path: gradio neither hashes nor copies its files into its cache, ~9 files a prediction)
PREDICTIONS = inference.Predictions(folder=Path(tempfile.mkdtemp(prefix="playground-features-")))


def prediction(session: Session, x) -> dict | None:
    """The network's top five classes on the learner's image as it is now: the label beside the charts (no feature
    maps: they are only shown on the Predict tab)."""
    if x is None:
        return None
    with session.lock:
        top = inference.predict(session.model, x, session.data.classes, 5, features=False, precision=session.precision)
    return dict(top["top"])


def view(session: Session, x=None, report=None, label=None) -> list:
    """Everything a training event updates: four charts, the status line, the prediction, the switch readout.
    `label`: the prediction if already made (a run makes it at most every LABEL_SECONDS)."""
    label = prediction(session, x) if label is None else label
    return [*chart_values(session), status_text(session, report), label, switch_readout(session)]


VIEW_CHARTS = (0, 1, 2, 3, 6)  # the outputs of `view` that are charts


def sent(values: list, charts_at=VIEW_CHARTS) -> list:
    """Outputs as gradio should get them: each chart's figure (at the positions `charts_at`) as one line of JSON,
    which the page's script reads as a whole figure. Gradio walks a dict output node by node, twice, looking for
    files: for a room's charts that was ~2.6 ms of the server's one Python thread per event; a text it passes on."""
    return [charts.to_json(v) if i in charts_at and isinstance(v, dict) else v for i, v in enumerate(values)]


# a page's connection -> (its latest image (Predict's), whether it came from the pad): for its runs' label, and so that
# an empty pad clears only a drawing's prediction
PAGE_IMAGES: dict[str, tuple[torch.Tensor | None, bool]] = {}


class RunLabel:
    """The prediction beside the charts during a run, of the page's image as it is now (a learner may draw or upload
    another mid-run): a forward pass at most every LABEL_SECONDS, at once for a new image, and at the end, not at
    every chart update (in a busy room that pass was a sixth of the server's time per update)."""

    def __init__(self, x, request: gr.Request):
        self.page, self.x, self.value, self.made = request.session_hash, x, None, -float("inf")

    def __call__(self, session: Session, end) -> dict | None:
        x = PAGE_IMAGES.get(self.page, (self.x,))[0]
        if x is not self.x:
            self.x, self.made = x, -float("inf")
        if x is None:
            self.value = None
        elif end or time.monotonic() - self.made >= LABEL_SECONDS:
            self.value, self.made = prediction(session, x), time.monotonic()
        return self.value


class ChartStreams:
    """A streaming handler's chart outputs, each through a FigureStream of its own, made when the handler starts:
    gradio then sends each update's new points, not every point again. The run's last update shows the figures
    themselves, so the final value a client gets is a figure, as from an event that does not stream."""

    def __init__(self, *positions: int):
        self.streams = {i: charts.FigureStream() for i in positions}

    def __call__(self, values: list, end) -> list:
        """`values` with each chart's figure as its stream's text; at the `end` (the report's), as a whole figure's."""
        if end:
            return sent(values, self.streams)
        return [self.streams[i].update(v) if i in self.streams else v for i, v in enumerate(values)]


def switch_readout(session: Session, k: int = 20) -> dict:
    """Around the learner's latest shortcut switch: each layer's mean gradient norm over up to k steps before and
    after it, as paired bars, and the loss's in the title; until there are steps on both sides, how to get one."""
    history = session.history
    switch = next((e["step"] for e in reversed(history.events) if e["kind"] == "shortcut"), None)
    after = sum(r["step"] > switch for r in history.steps) if switch is not None else 0
    if switch is None or not after or not any(r["step"] <= switch for r in history.steps):
        return translated(charts.switch_placeholder(id(session.model)))
    readout = guided.before_after(history, switch, min(k, after))
    return translated(charts.before_after_figure(readout, revision=id(session.model)))


def block_choices(session: Session) -> list[tuple[str, str]]:
    """(label in the learner's language, value) per block; the value is the same in every language."""
    return [(say("block", i=i), f"block {i}") for i in range(1, len(session.shortcuts) + 1)]


# --- handlers ---------------------------------------------------------------------------------------------------
LEARNERS: dict[str, str] = {}  # a page's connection -> its browser's learner key (the same after a reload)


def learner(request: gr.Request) -> str:
    """The key of the learner behind a request: their browser's (kept in its local storage, so a reload finds
    their run again), or the connection's for a client that has no browser (the API)."""
    return LEARNERS.get(request.session_hash, request.session_hash)


def adopt(browser_key, request: gr.Request) -> str:
    """The page's first event: tie this connection to its browser's learner key, making one the first time."""
    key = browser_key if isinstance(browser_key, str) and len(browser_key) == 32 and browser_key.isalnum() else None
    key = key or uuid.uuid4().hex
    LEARNERS[request.session_hash] = key
    return key


@functools.cache
def visitor() -> Session:
    """What a page shows before its learner trains: the shipped model, shared by every visitor and never trained.
    Looking and predicting take no seat; the first training action makes the learner a session of their own."""
    return first_session()


@functools.cache
def shipped_accuracy() -> dict:
    """{"acc", "n"}: the shipped model on the held-out images, measured once. Its status says Step 0 (it was trained
    before the visitor came) beside predictions at 100%: this says how good it is."""
    session = visitor()
    with session.lock:  # the model is shared: no prediction's forward pass meanwhile
        return {"acc": session.evaluate(session.config.eval_size)["acc"], "n": session.config.eval_size}


def own_or_shared(request: gr.Request) -> Session:
    return POOL.peek(learner(request)) or visitor()


@user_errors
def on_load(last_x, request: gr.Request):
    session = own_or_shared(request)
    blocks = block_choices(session)
    on = [value for (_, value), s in zip(blocks, session.shortcuts) if s]
    return [
        *sent(view(session, last_x)),
        gr.update(choices=blocks, value=on),
        all(session.shortcuts),
        gr.update(choices=list(session.data.classes)),
        gr.update(choices=list(session.layers), value="block1.conv1"),
    ]


@user_errors
def reset(
    dataset,
    architecture,
    seed,
    optimizer,
    lr,
    batch,
    last_x,
    request: gr.Request,
    progress=gr.Progress(track_tqdm=True),  # noqa: B008 -- shows a Hub download's progress
):
    session = own_or_shared(request)
    own = session.data if session.config.dataset.startswith("zip:") and dataset == session.config.dataset else None
    try:
        fresh = new_session(dataset, architecture, data=own, seed=seed or 0, **settings_asked(optimizer, lr, batch))
    except DataError as e:  # a Hub dataset out of reach: said, and the Dataset box back on what the network trains on
        log.info("reset refused: %s", e.text("en"))
        gr.Warning(e.text(LANG.get()))
        return [*on_load(last_x, request), last_x, gr.update(value=session.config.dataset), gr.skip()]
    return switch_to(fresh, session, last_x, request)


def settings_asked(optimizer, lr, batch) -> dict:
    """The Training box's optimizer, lr and batch size, for the session (a change) or a new one (Reset, Train on my
    zip): the session checks their ranges (a batch of 0, an lr of 1e9: a clear refusal); an emptied number box is
    refused here."""
    if lr is None or batch is None:
        raise refuse("numbers")
    return {"optimizer": optimizer, "lr": lr, "batch_size": batch}


def switch_to(fresh: Session, old: Session, last_x, request: gr.Request):
    POOL.get(learner(request), make=lambda: fresh)  # a visitor's first Reset or Load takes a seat (if one is free)
    POOL.replace(learner(request), fresh)
    preview = gr.skip()
    if fresh.data.classes != old.data.classes:  # a picture means nothing to a net with other classes: gone, also
        last_x = preview = None  # from a run's label and the Teach tab too
        PAGE_IMAGES[request.session_hash] = (None, True)
    dataset = gr.update(choices=dataset_choices(fresh), value=fresh.config.dataset)
    return [*on_load(last_x, request), last_x, dataset, preview]


def dataset_choices(session: Session) -> list[str]:
    own = [session.config.dataset] if session.config.dataset not in DATASETS else []
    return sorted(DATASETS) + own  # a learner's zip is theirs alone: it is not in the shared registry


@user_errors
def use_zip(path, architecture, seed, optimizer, lr, batch, last_x, request: gr.Request):
    if not path:
        raise refuse("no_zip")
    data = zipdata.load_zip(path)
    session = own_or_shared(request)
    fresh = new_session(data.name, architecture, data=data, seed=seed or 0, **settings_asked(optimizer, lr, batch))
    gr.Info(say("zip_ok", train=len(data.train_y), test=len(data.test_y), classes=len(data.classes)))
    return switch_to(fresh, session, last_x, request)


@user_errors
def download_model(request: gr.Request):
    session = own_or_shared(request)
    path = downloads(request) / "resnet-playground.zip"  # one folder per learner, deleted when they leave
    with session.lock:
        model = checkpoint.to_hub(session.model, session.data.classes, session.config.dataset)
        stats = card_stats(session)
    return str(checkpoint.download_zip(model, model.classes, model.dataset, path, stats))


def card_stats(session: Session) -> dict:
    """What the model card says of the run: steps trained and the latest held-out accuracy."""
    evals = session.history.evals
    return {"steps": session.step_count, "held_out_acc": evals[-1]["acc"] if evals else None}


@user_errors
def download_run(request: gr.Request):
    """The learner's run as CSV (a row per step: loss, accuracy, every layer's gradient norm, events)."""
    path = downloads(request) / "resnet-playground-run.csv"
    path.write_text(runlog.history_csv(own_or_shared(request).history))
    return str(path)


def downloads(request: gr.Request, make: bool = True) -> Path:
    key = learner(request)
    name = "".join(c for c in key if c.isascii() and (c.isalnum() or c == "-"))[:64]  # never a path
    # a key with nothing left ("!!!", a session hash any client may pick) named DOWNLOADS itself, which the
    # closing of its page deleted with every learner's downloads in it
    folder = DOWNLOADS / (name or "key-" + hashlib.blake2b(key.encode(), digest_size=8).hexdigest())
    if make:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


@user_errors
def load_model(upload, repo_id, last_x, request: gr.Request):
    if upload:
        model = checkpoint.load_upload(upload)  # read in memory: nothing extracted, no folder left behind
    elif repo_id and repo_id.strip():
        model = checkpoint.load_repo(repo_id)  # an id, never a path on this server; sizes checked first
    else:
        raise refuse("no_model")
    session = POOL.get(learner(request))
    fresh = checkpoint.session_from(model, session.config, data=session.data)  # data: the learner's own zip
    return switch_to(fresh, session, last_x, request)


@user_errors
def push_model(repo_id, token, request: gr.Request):
    """The token is used for this one call: not stored, not logged, not in any state."""
    if not (repo_id and repo_id.strip() and token and token.strip()):
        raise refuse("no_push")
    session = own_or_shared(request)
    with session.lock:  # a copy: the push itself runs without holding the learner's session
        model, stats = (
            checkpoint.to_hub(session.model, session.data.classes, session.config.dataset),
            card_stats(session),
        )
    url = checkpoint.push(model, repo_id.strip(), token.strip(), stats)  # its errors never echo the token
    return say("pushed", url=url), ""  # and clear the token box


@user_errors
def configure(optimizer, lr, batch, request: gr.Request):
    session = POOL.get(learner(request))
    try:
        session.configure(**settings_asked(optimizer, lr, batch))
    except UserError as e:
        gr.Warning(e.text(LANG.get()))
        c = session.config
        return c.optimizer, c.lr, c.batch_size
    return gr.update(), gr.update(), gr.update()


@user_errors
def step(last_x, request: gr.Request):
    with POOL.click(learner(request)) as session:
        report = session.step(1)
    return sent(view(session, last_x, report))


def steps_asked(n) -> int:
    """Step xN's N, checked here rather than by the box's bounds (gradio's own refusal is English only) or its
    precision (which rounded 2.5 to 2 unsaid)."""
    if not whole(n) or not 1 <= n <= 10_000:
        raise refuse("bad_n")
    return int(n)


def whole(value) -> bool:
    """A whole number, as a number box or an API caller sends it (2.0 is one; 2.5, "2", True and inf are not)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and value == int(value)


@user_errors
def step_n(n, last_x, request: gr.Request, progress=gr.Progress()):  # noqa: B008 -- gradio's injection idiom
    n = steps_asked(n)
    messages, streams, label = [], ChartStreams(*VIEW_CHARTS), RunLabel(last_x, request)
    progress((0, n), desc="training", unit="steps")
    for session, report in POOL.train(learner(request), steps=n, page=request.session_hash):
        progress((report["total"], n), desc="training", unit="steps")
        messages += [*report.get("messages", []), *run_ended(report)]  # a Pause's last report may have no steps
        shown = view(session, last_x, {**report, "messages": messages}, label(session, report["end"]))
        yield streams(shown, report["end"])


@user_errors
def play(last_x, request: gr.Request):
    """Train until Pause, a new run or PLAY_SECONDS; the pool ends a run whose session Reset or Load replaced."""
    streams, label = ChartStreams(*VIEW_CHARTS), RunLabel(last_x, request)
    for session, report in POOL.train(learner(request), seconds=PLAY_SECONDS, page=request.session_hash):
        report = {**report, "messages": [*report.get("messages", []), *run_ended(report)]}
        yield streams(view(session, last_x, report, label(session, report["end"])), report["end"])
        if report["end"] == "timeout":
            gr.Info(say("timeout", minutes=PLAY_SECONDS / 60))


def run_ended(report: dict) -> list[str]:
    """Why a run ended, where its page would not know otherwise: a newer run took its network over."""
    return [say("replaced")] if report["end"] == "replaced" else []


@user_errors
def pause(last_x, request: gr.Request):
    """Ends Play or Step xN once the turn in flight is over, then shows where training stopped."""
    POOL.stop(learner(request))
    return sent(view(own_or_shared(request), last_x))


@user_errors
def set_all_shortcuts(on, last_x, request: gr.Request):
    session = POOL.get(learner(request))
    session.set_shortcut(bool(on))
    return [*sent(view(session, last_x)), [value for _, value in block_choices(session)] if on else []]


@user_errors
def set_block_shortcuts(selected, last_x, request: gr.Request):
    session = POOL.get(learner(request))
    with session.lock:
        for i, (_, value) in enumerate(block_choices(session), 1):
            session.set_shortcut(value in (selected or []), i)
    return [*sent(view(session, last_x)), all(session.shortcuts)]


@user_errors
def predict(value, request: gr.Request):
    """A new image: prepare it once, keep it (as last_x) so predictions follow training, and show what each block
    sees. An upload removed clears the outputs; an empty pad (cleared, or drawn the first time the Predict tab opens)
    clears its own drawing's prediction, not an upload's or an example's (the pad's first drawing came a few ms
    after an example's click, now and then, and wiped the example's prediction)."""
    page, pad = request.session_hash, isinstance(value, dict)
    if value is None or (pad and value.get("composite") is None and not value.get("layers")):
        if pad and not PAGE_IMAGES.get(page, (None, True))[1]:
            return gr.skip()
        PAGE_IMAGES[page] = (None, pad)
        return None, None, [], None
    PAGE_IMAGES[page] = (None, pad)  # a run's label shows no image's prediction but this one's from now on
    session = own_or_shared(request)
    try:
        x = inference.to_tensor(value, channels=session.model_config.in_channels)
    except inference.ImageError as e:
        # the pad emptied (its own Undo of the last stroke, say), or a file that is no image: said, and the last
        # image's prediction cleared, not left as if it were this one's (an API caller gets a bad file as an error)
        if not (isinstance(e, inference.EmptyDrawing) or on_page(request)):
            raise
        log.info("predict refused: %s", e.text("en"))
        gr.Warning(e.text(LANG.get()))
        return None, None, [], None
    PAGE_IMAGES[page] = (x, pad)
    result = PREDICTIONS.predict(session, x)
    return x, dict(result["top"]), result["features"], result["picture"]


class JudgedImage(gr.Image):
    """An image input whose files the app judges: gradio opens an upload before the handler sees it and fails on a
    junk or bomb file with its own message (and the server's paths); this passes such a file's path on instead, so
    resnet.inference can say what is wrong in a learner's words. A class, not a patched instance: gradio builds a
    session's own copy of a component from its class when an event updates its settings (an example's click)."""

    is_template = True  # the page draws it as gradio's Image

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except Exception:  # noqa: BLE001 -- whatever it was, inference re-reads the file and explains
            return payload.path if payload is not None else None


SKETCH_LAYERS = 4  # the most layers a drawing may have (the page's pad sends one)


class JudgedSketch(gr.Sketchpad):
    """The drawing pad, its files checked before gradio decodes them: gradio decodes every layer it is sent, and an
    API caller can send one huge image as many layers (24 layers of a 9000x9000 PNG took a server from 6.6 to 10.6
    GB). The page sends one layer, a background and their composite, each the pad's size."""

    def get_block_name(self) -> str:
        return "imageeditor"  # the page draws it as gradio's Sketchpad does (a template of its ImageEditor)

    def preprocess(self, payload):
        if payload is not None:
            sent = (self.blob_storage.get(payload.id) if payload.id is not None else None) or payload
            layers = [layer for layer in sent.layers or [] if layer is not None]
            if len(layers) > SKETCH_LAYERS:
                raise gr.Error(say("too_many_layers", n=len(layers), most=SKETCH_LAYERS))
            for image in (sent.background, sent.composite, *layers):
                if image is not None:
                    try:
                        inference.header(getattr(image, "path", image)).close()  # a FileData's file, or a blob's bytes
                    except inference.ImageError as e:
                        raise gr.Error(e.text(LANG.get())) from None
        return super().preprocess(payload)


CLEAR_PAD_JS = """() => {
  const pad = document.querySelector('#sketch');
  pad.querySelector('button[aria-label="Clear canvas"]')?.click();
  setTimeout(() => pad.querySelector('button[aria-label="Brush"]')?.click(), 100);
}"""


def blank_sketch() -> dict:
    # a white background makes the brush active at once (with no value the pad asks to pick a tool first)
    return {"background": np.full((SKETCH_SIZE, SKETCH_SIZE, 3), 255, np.uint8), "layers": [], "composite": None}


def labelled(session: Session, last_x, label):
    if last_x is None:
        raise refuse("no_image")
    if label not in session.data.classes:
        raise refuse("no_label")
    return last_x, torch.tensor([session.data.classes.index(label)])


@user_errors
def teach_step(last_x, label, layer, request: gr.Request):
    labelled(POOL.get(learner(request)), last_x, label)  # a missing image or label is said at once, not after a wait
    with POOL.click(learner(request)) as session:
        record = session.teach(*labelled(session, last_x, label))
    if "rejected" in record:
        raise UserError(in_language(record["rejected"]))  # a diverged step: no bug
    text = say("taught", step=record["step"], label=label, loss=record["loss"])
    figure = translated(charts.gradient_tensor_figure([record["grads"]], layer, titles=(say("this_step"),)))
    bars = translated(charts.grad_norm_bars_figure({say("this_step"): record["grad_norm"]}))
    return [*sent(view(session, last_x)), text, go.Figure(figure), go.Figure(bars)]


@user_errors
def mix(last_x, label, request: gr.Request):
    session = POOL.get(learner(request))
    x, y = labelled(session, last_x, label)
    session.mix_in(x, y, steps=20)
    return say("mixed", label=label)


@user_errors
def compare(last_x, label, layer, request: gr.Request):
    """The same image, weights and label, with every shortcut on and then off: no step is taken."""
    labelled(POOL.get(learner(request)), last_x, label)
    with POOL.click(learner(request)) as session:
        x, y = labelled(session, last_x, label)
        n = len(session.shortcuts)
        on, off = session.gradients(x, y, [True] * n), session.gradients(x, y, [False] * n)
    text = say("compared", on=on["loss"], off=off["loss"])
    figure = translated(
        charts.gradient_tensor_figure([on["grads"], off["grads"]], layer, titles=(say("on"), say("off")))
    )
    bars = translated(charts.grad_norm_bars_figure({say("on"): on["grad_norm"], say("off"): off["grad_norm"]}))
    return text, go.Figure(figure), go.Figure(bars)


# --- tools for an assistant (MCP): stateless, so agents sharing gradio's one MCP client share no learner's run ---
MAX_TOOL_STEPS = 100  # training steps a plain_vs_residual call may take (~1 min at 20 layers on 2 CPU cores)


@user_errors
def classify_image(image_base64: str) -> dict[str, float]:
    """Classify a picture with the shipped trained ResNet (the course notebook's 8-layer net, 99.3% held-out
    accuracy on the built-in shapes: circle, square, triangle, star, heart, crescent, plus, cross, arrow, lightning).

    Args:
        image_base64: the image file's bytes, base64-encoded (PNG, JPEG, GIF or WebP; at most 10 MB and 40
            million pixels).
    Returns:
        The five most likely classes, each with its probability (0 to 1).
    """
    try:
        data = base64.b64decode(image_base64 or "", validate=True)
    except (binascii.Error, ValueError):
        raise refuse("not_base64") from None
    if len(data) > zipdata.MAX_UPLOAD_MB * zipdata.MB:
        raise refuse("too_big", mb=zipdata.MAX_UPLOAD_MB)
    session = visitor()  # the shared shipped model: read, never trained
    return prediction(session, inference.to_tensor(data))


@user_errors
def plain_vs_residual(layers: int = 20, steps: int = 30) -> dict:
    """Train a residual network and its plain twin (the same net without shortcuts) from the same initial weights
    on the same batches of the built-in shapes dataset, and report how far each got. Deeper plain nets fall behind.

    Args:
        layers: depth of the paper's CIFAR net, 6n+2: 8, 14, 20, 32, 44 or 56 layers.
        steps: training steps (batches of 64 images), 1 to 100.
    Returns:
        {"layers", "steps", "residual": {"loss", "accuracy"}, "plain": {...}}: each net's mean training loss
        (cross-entropy; 2.30 is chance for 10 classes) and batch accuracy (0 to 1) over its last 10 steps.
    """
    if not (whole(layers) and whole(steps)):  # "abc" or None was a bug report ("Something went wrong"); 20.5 ran as 20
        raise refuse("bad_tool_args", most=MAX_TOOL_STEPS)
    layers, steps = int(layers), int(steps)
    if layers < 8 or (layers - 2) % 6 or layers > 56 or not 1 <= steps <= MAX_TOOL_STEPS:
        raise refuse("bad_tool_args", most=MAX_TOOL_STEPS)
    twins = TwinSession(TrainConfig(seed=0, eval_every=0), cifar_config((layers - 2) // 6))
    for _ in range(0, steps, 5):  # a few steps per hardware turn: learners training meanwhile keep their turns
        with POOL.compute(priority=PLAY):
            twins.step(min(5, steps - twins.step_count))
    tail = {name: h.steps[-10:] for name, h in twins.histories.items()}
    return {"layers": layers, "steps": steps, **{
        name: {"loss": sum(r["loss"] for r in rs) / len(rs), "accuracy": sum(r["acc"] for r in rs) / len(rs)}
        for name, rs in tail.items() if rs
    }}  # fmt: skip


def mcp_available() -> bool:
    """Gradio's MCP server needs its optional extra (`pip install "gradio[mcp]"`); the app runs without it."""
    try:
        installed = importlib.util.find_spec("mcp") is not None
    except (ImportError, ValueError):  # ValueError: a module entry of None, i.e. blocked on purpose
        installed = False
    return installed and os.environ.get("PLAYGROUND_MCP", "1") != "0"


def room() -> dict:
    """The room at a glance, for an instructor or a load test: seats taken, seats in all, training runs going."""
    return {"seats": len(POOL), "max_seats": POOL.max_sessions, "running": POOL.running()}


def close(request: gr.Request):
    """The page is gone, or reloading: the runs it started end now. If it was its browser's last open page, its
    seats are freed unless the browser is back within a grace (a reload), and its downloads go."""
    keys, folder = (learner(request), twin_key(request), guided_key(request)), downloads(request, make=False)
    LEARNERS.pop(request.session_hash, None)  # the tab is gone: free its models now, not in an hour
    PAGE_IMAGES.pop(request.session_hash, None)
    # another tab of this browser (or the reloaded page, which gradio can see before the old one's end) keeps them;
    # list(): one C-level copy, safe while other threads add and remove pages
    last = keys[0] not in list(LEARNERS.values())
    for key in keys:
        POOL.leave(key, RELOAD_GRACE_SECONDS, page=request.session_hash, last=last)
    if last:
        shutil.rmtree(folder, ignore_errors=True)


# --- guided experiments -----------------------------------------------------------------------------------------
def guided_key(request: gr.Request) -> str:
    return learner(request) + ":guided"  # a guided run takes a seat of its own, beside the learner's session


def guided_texts(experiment_id: str) -> dict:
    return guided.get(experiment_id).texts(fast=GUIDED_FAST)


def guided_turn(run: guided.GuidedRun, n: int) -> dict:
    """One hardware turn of a guided run, as the pool's runs report it."""
    before = run.progress()["steps"]
    progress = run.advance(n)
    done = progress["steps"] - before
    return {"step": progress["steps"], "done": done, "rejected": 0, "messages": [], "last": None,
            "finished": progress["done"]}  # fmt: skip


def guided_figures(experiment: guided.Experiment, history, records: list[dict]) -> list[dict]:
    """A run's two charts, live or recorded: first the one its "What to watch" names (`experiment.chart`), then the
    other view of the same run (the loss beside the lesions; each layer's off/on ratio beside the drawing's bars)."""
    revision = id(history)
    drawing, lesions, switch = (
        next((r for r in records if r["kind"] == k), None) for k in ("gradients", "lesions", "shortcuts")
    )
    if drawing is not None:  # no step taken: no loss to draw
        on, off = drawing["on"]["grad_norm"], drawing["off"]["grad_norm"]
        bars = charts.grad_norm_bars_figure({say("on"): on, say("off"): off})
        return [translated(bars), translated(charts.grad_ratio_figure(on, off))]
    loss = translated(charts.loss_figure(history, revision))  # the twins' histories draw both nets: "twin_loss"
    if lesions is not None:
        return [translated(charts.lesion_figure(lesions["lesions"], revision)), loss]
    if switch is not None:  # a single net's history (the twins' is a dict of two)
        steps = history["steps"] if isinstance(history, dict) else history.steps
        if any(r["step"] > switch["step"] for r in steps):  # training on both sides of the switch
            k = (experiment.fast if GUIDED_FAST else experiment.full).window
            readout = charts.before_after_figure(guided.before_after(history, switch["step"], k), revision)
            return [loss, translated(readout)]
    return [loss, translated(charts.accuracy_figure(history, revision))]


def guided_waiting() -> list[dict]:
    """The live charts before a run: empty, saying where the run will draw (a blank gap looked broken)."""
    empty = charts.with_hint(translated(charts.loss_figure(History(2))), say("guided_hint"))
    return [empty, empty]  # the same figure twice: `sent` writes each as JSON, nothing changes it


GUIDED_SHOWN_CHARTS = (1, 2, 4, 5)  # the outputs of `guided_show` that are charts: recorded, then live


@user_errors
def guided_show(experiment_id, request: gr.Request):
    """What an experiment sets up, what to watch, what to expect, and its recorded run (both its charts), before
    it runs; the live charts wait for the run."""
    texts, lang = guided_texts(experiment_id), LANG.get()
    guide = "  \n".join(f"**{say(part)}** {texts[part][lang]}" for part in ("setup", "watch", "expect"))
    try:
        recorded = guided.load_recorded(experiment_id)
    except UserError:
        return sent([guide, None, None, say("no_recording"), *guided_waiting(), ""], GUIDED_SHOWN_CHARTS)
    m = recorded["machine"]
    note = say("recorded", cpu=m["cpu"], date=m["date"][:10], seconds=recorded["seconds"],
               readout=recorded["effect"]["readout"][lang])  # fmt: skip
    figures = guided_figures(guided.get(experiment_id), recorded["history"], recorded["records"])
    return sent([guide, *figures, note, *guided_waiting(), ""], GUIDED_SHOWN_CHARTS)


@user_errors
def guided_pick(experiment_id, request: gr.Request):
    """Another experiment picked: a run under way stops (it went on under the new one's text) and says so."""
    POOL.stop(guided_key(request))
    return guided_show(experiment_id, request)


@user_errors
def guided_run(experiment_id, request: gr.Request):
    """Set the experiment up on a network of its own, run it a turn at a time, and check its claim at the end."""
    key, lang = guided_key(request), LANG.get()
    run = guided.GuidedRun(experiment_id, fast=GUIDED_FAST)
    POOL.get(key, make=lambda: run.session)  # a seat (the room may be full), then this run's network in it
    POOL.replace(key, run.session)
    streams, end = ChartStreams(0, 1), None
    turn = lambda _, n: guided_turn(run, n)  # noqa: E731
    for _, report in POOL.train(key, seconds=PLAY_SECONDS, step=turn, page=request.session_hash):
        end = report["end"]
        p = run.progress()
        phase = min(p["phase"] + 1, p["phases"])  # the phase under way, counted from 1
        line = say("guided_progress", steps=p["steps"], total=p["total"], phase=phase, phases=p["phases"])
        if run.done:
            found = guided.effect(experiment_id, run)
            line = ("✅ " if found["holds"] else "⚠️ ") + found["readout"][lang]
        elif end in ("stopped", "timeout"):  # paused: said on this run's own stream, after its "Running" lines
            # the charts as the last turn drew them; another pick's empty ones (that pick stopped this run) stay
            yield gr.skip(), gr.skip(), say("guided_stopped")
            continue
        yield streams([*guided_figures(run.experiment, run.history(), run.records), line], end)
    if end is None and not run.done:  # ended unsaid: a new run of the experiments took its seat (here, another tab)
        yield gr.skip(), gr.skip(), say("guided_replaced")


@user_errors
def guided_stop(request: gr.Request):
    """Ends the run before its next turn; the run then says it stopped (one already over: this says it)."""
    POOL.stop(guided_key(request))
    return say("guided_stopped")


def guided_tab() -> None:
    """Every claim the app makes, one click away: set up, run, checked on the run's own numbers, beside a run
    recorded on a named machine (so the point shows at once on slow hardware, and the live run confirms it)."""
    first = next(iter(guided.EXPERIMENTS))
    pick = gr.Radio(
        [(I18N(f"guided_{e}"), e) for e in guided.EXPERIMENTS], value=first, label=I18N("guided_pick"),
        elem_id="guided_pick",
    )  # fmt: skip
    guide = gr.Markdown(elem_id="guided_text")
    with gr.Row():
        run_btn = gr.Button(I18N("guided_run"), variant="primary", elem_id="guided_run")
        stop_btn = gr.Button(I18N("guided_stop"), elem_id="guided_stop")  # a run stopped starts over: not a Pause
    status = gr.Markdown(elem_id="guided_status")
    live, readout = chart_row("guided-live", "guided-readout")
    recorded_note = gr.Markdown(elem_id="guided_recorded_note")
    recorded = chart_row("guided-recorded", "guided-recorded-readout")

    shown = [guide, *recorded, recorded_note, live, readout, status]
    pick.input(guided_pick, pick, shown, api_name="guided_show")  # the learner's pick; the page's load shows the first
    run_btn.click(guided_run, pick, [live, readout, status], api_name="guided_run", **TRAIN)
    # no `cancels`: gradio's cancel of a run kept its last "Running" line on screen over Pause's answer (seen in
    # chromium); POOL.stop ends the run within a turn, and the run's own last word says so
    stop_btn.click(guided_stop, None, status, api_name="guided_stop")
    return SimpleNamespace(pick=pick, shown=shown)


# --- residual vs plain ------------------------------------------------------------------------------------------
def twin_key(request: gr.Request) -> str:
    return learner(request) + ":twin"  # a learner's twins take a seat of their own in the same pool


def new_twins(architecture: str = "ResNet-20", seed: int = 0) -> TwinSession:
    return TwinSession(TrainConfig(seed=seed, eval_every=25, eval_size=300), architecture_config(architecture))


TWIN_CHARTS = (0, 1, 2, 3)  # the outputs of `twin_view` that are charts


def twin_view(twins: TwinSession, report: dict | None = None) -> list:
    h, revision = twins.histories, id(twins.residual.model)
    lines = [say("twin_status", step=twins.step_count, depth=twins.residual.model_config.depth)]
    for name, hist in h.items():
        if hist.steps:
            held = say("twin_held", acc=hist.evals[-1]["acc"]) if hist.evals else ""
            lines.append(say("twin_line", name=say(name), loss=hist.steps[-1]["loss"], held=held))
    for name in twins.twins:  # a Pause's last report may have no steps
        lines += [f"⚠️ {say(name)}: {in_language(m)}" for m in (report or {}).get(name, {}).get("messages", [])[-2:]]
    return [
        translated(charts.loss_figure(h, revision)),
        translated(charts.accuracy_figure(h, revision)),
        translated(charts.depth_figure(h, revision)),
        translated(charts.routes_figure(twins.routes, revision)),
        "  \n".join(lines),
    ]


@user_errors
def twin_start(request: gr.Request):
    """The twins' tab before they train: the learner's twins if they have some, else empty charts that say how to
    start (the twins are built at the first Reset, Step or Play: a look takes no seat)."""
    twins = POOL.peek(twin_key(request))
    if twins is not None:
        return sent(twin_view(twins), TWIN_CHARTS)
    empty = {"residual": History(2), "plain": History(2)}
    figures = [charts.loss_figure(empty), charts.accuracy_figure(empty), charts.depth_figure(empty),
               charts.routes_figure([])]  # fmt: skip
    return sent([*map(translated, figures), say("twin_idle")], TWIN_CHARTS)


@user_errors
def twin_reset(architecture, seed, request: gr.Request):
    fresh = new_twins(architecture, seed or 0)  # the session checks the seed
    POOL.get(twin_key(request), make=lambda: fresh)  # a first Reset takes a seat (if one is free), as the main one
    POOL.replace(twin_key(request), fresh)
    return sent(twin_view(fresh), TWIN_CHARTS)


@user_errors
def twin_step_n(n, architecture, seed, request: gr.Request):
    yield from twin_train(request, steps_asked(n), architecture, seed)


@user_errors
def twin_play(architecture, seed, request: gr.Request):
    yield from twin_train(request, None, architecture, seed)


def twin_train(request: gr.Request, steps: int | None, architecture: str, seed):
    """`steps` twin steps (None: until Pause), streamed as the charts' updates. The learner's first click builds
    their twins at the depth and seed they picked."""
    streams, make = ChartStreams(*TWIN_CHARTS), lambda: new_twins(architecture, seed or 0)
    runs = POOL.train(twin_key(request), steps=steps, seconds=PLAY_SECONDS, make=make, page=request.session_hash)
    for twins, report in runs:
        shown = twin_view(twins, report)
        shown[-1] += "".join(f"  \n⚠️ {m}" for m in run_ended(report))
        yield streams(shown, report["end"])
        if report["end"] == "timeout":
            gr.Info(say("timeout", minutes=PLAY_SECONDS / 60))


@user_errors
def twin_pause(request: gr.Request):
    POOL.stop(twin_key(request))
    return twin_start(request)  # where the twins stopped; a Pause before any twins builds none (nor takes a seat)


@user_errors
def twin_lesions(architecture, seed, request: gr.Request):
    """Each block bypassed in turn, both twins; the twins' panel shows what a first Lesions built."""
    with POOL.click(twin_key(request), lambda: new_twins(architecture, seed or 0)) as twins:
        lesions = go.Figure(translated(charts.lesion_figure(twins.lesions(size=300))))
        return [lesions, *sent(twin_view(twins), TWIN_CHARTS)]


def build_demo() -> gr.Blocks:
    """The page: training controls and live charts on top, then a tab per activity."""
    gr.set_static_paths([PLOTLY_JS, ASSETS, PREDICTIONS.folder])
    # delete_cache: the uploads and the files gradio keeps of outputs, an hour after they came (checked every 10
    # minutes); without it a public server's disk fills with anonymous uploads (five 9-MB files stayed for ever)
    with gr.Blocks(title="ResNet Playground", delete_cache=(600, 3600)) as demo:
        last_x = gr.State(None)  # the learner's latest image as the network's (1, 3, 32, 32) input
        gr.Markdown(I18N("title"))
        start = gr.Button(I18N("start_here"), elem_id="start_here")
        ui = training_panel()
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab(I18N("guided"), id="guided"):
                claims = guided_tab()
            with gr.Tab(I18N("predict"), id="predict"):
                seen = predict_tab()
            with gr.Tab(I18N("teach"), id="teach"):
                taught = teach_tab()
            with gr.Tab(I18N("data_model"), id="data"):
                own = data_tab()
            with gr.Tab(I18N("twins"), id="twins"):
                twin_out = twins_tab()
            with gr.Tab(I18N("learn"), id="learn"):
                learn_tab(tabs, claims)
        # the teaching sits under the training panel (a phone's 3.6 screens down): one click from the top
        start.click(lambda: gr.Tabs(selected="guided"), None, tabs, js=SHOW_TABS_JS, queue=False)
        adopted = wire_training(demo, ui, seen, taught, own, last_x)
        demo.load(guided_show, claims.pick, claims.shown, api_visibility="private")
        # the learner's twins once the page knows its learner (a reload finds them; before any, charts with axes).
        # Not on the tab's select: a learner who opened it at once saw gradio's "in queue", English on a zh page
        adopted.then(twin_start, None, twin_out, api_visibility="private", show_progress="hidden")
        gr.api(room, api_name="room", queue=False)
        demo.unload(close)
        # The UI's endpoints keep a learner's state: callable (the page and gradio_client use them) but left out
        # of the API page and so of the MCP tools, which are the two stateless functions below
        for fn in demo.fns.values():
            fn.api_visibility = "undocumented" if fn.api_visibility == "public" else fn.api_visibility
        # it decodes an image of up to 40 Mpx (~0.5 GB at its peak): with Predict's, four at a time in all
        gr.api(classify_image, api_name="classify_image", concurrency_id="predict")
        gr.api(plain_vs_residual, api_name="plain_vs_residual", concurrency_limit=2)
    return demo


TRAIN = {"concurrency_id": "train", "concurrency_limit": MAX_SESSIONS}  # the real limit: POOL's hardware slots


SHOW_TABS_JS = "() => { document.getElementById('tabs')?.scrollIntoView({behavior: 'smooth'}); }"


def learn_tab(tabs: gr.Tabs, claims: SimpleNamespace) -> None:
    """The course notebook's points and its bug, then what we measured: each claim beside a button that opens its
    guided experiment (the last, Predict), so every claim is one click from being checked."""
    gr.Markdown(I18N("learn_text"))  # in the browser's language, like the rest of the page
    for claim in LEARN_CLAIMS:
        with gr.Row(equal_height=True):
            gr.Markdown(I18N(f"learn_{claim}"), elem_classes="claim")
            label = I18N("open_predict" if claim == "predict" else "check_it")
            button = gr.Button(label, size="sm", scale=0, min_width=130, elem_id=f"check_{claim}")
        if claim == "predict":
            button.click(lambda: gr.Tabs(selected="predict"), None, tabs, js=SHOW_TABS_JS, queue=False)
            continue
        opened = button.click(lambda c=claim: (gr.Tabs(selected="guided"), c), None, [tabs, claims.pick],
                              js=SHOW_TABS_JS, queue=False)  # fmt: skip
        opened.then(guided_pick, claims.pick, claims.shown, api_visibility="private")


def training_panel() -> SimpleNamespace:
    """Step, Play, Pause, the shortcut switches and the settings on the left; the four live charts on the right."""
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            with gr.Group():
                with gr.Row():
                    step_btn = gr.Button(I18N("step"), variant="primary", elem_id="step", min_width=70)
                    play_btn = gr.Button(I18N("play"), variant="primary", elem_id="play", min_width=70)
                    pause_btn = gr.Button(I18N("pause"), elem_id="pause", min_width=70)
                with gr.Row(equal_height=True):
                    # steps_asked checks it
                    n_steps = gr.Number(50, label=I18N("n"), scale=1, min_width=70, elem_id="n_steps")
                    step_n_btn = gr.Button(I18N("step_n"), scale=1, elem_id="step_n", min_width=70)
            status = gr.Markdown(elem_id="status")
            all_on = gr.Checkbox(True, label=I18N("all_shortcuts"), elem_id="all_shortcuts")
            blocks_on = gr.CheckboxGroup([], label=I18N("block_shortcuts"), elem_id="block_shortcuts")
            with gr.Accordion(I18N("train"), open=True):
                optimizer = gr.Radio(OPTIMIZER_CHOICES, value="adam", label=I18N("optimizer"))
                lr = gr.Number(1e-3, label=I18N("lr"), elem_id="lr")
                # no precision: it rounded 1.5 to 2 unsaid (the box still saying 1.5); the session refuses 1.5
                batch = gr.Number(64, label=I18N("batch"), elem_id="batch")
                # these three make a new network: a change shows only after Reset, and says so
                dataset = gr.Dropdown(sorted(DATASETS), value="shapes", label=I18N("dataset"), info=I18N("on_reset"))
                architecture = gr.Dropdown(
                    architecture_choices(),
                    value=list(ARCHITECTURES)[0],
                    label=I18N("architecture"),
                    info=I18N("on_reset"),
                )
                seed = gr.Number(0, label=I18N("seed"), info=I18N("on_reset"))  # as the batch: the session checks it
                reset_btn = gr.Button(I18N("reset"), variant="stop", elem_id="reset")
        with gr.Column(scale=3):
            loss_chart, acc_chart = chart_row("chart-loss", "chart-acc")
            grad_chart, heat_chart = chart_row("chart-grad", "chart-heat")
            (switch_chart,) = chart_row("chart-switch")
    return SimpleNamespace(
        step_btn=step_btn, play_btn=play_btn, pause_btn=pause_btn, n_steps=n_steps, step_n_btn=step_n_btn,
        status=status, all_on=all_on, blocks_on=blocks_on, optimizer=optimizer, lr=lr, batch=batch,
        dataset=dataset, architecture=architecture, seed=seed, reset_btn=reset_btn,
        charts=[loss_chart, acc_chart, grad_chart, heat_chart], switch_chart=switch_chart,
    )  # fmt: skip


def predict_tab() -> SimpleNamespace:
    """Draw, upload or pick an example; see the top five classes and what each block sees."""
    examples = sorted(str(p) for p in ASSETS.glob("examples/*.png"))
    with gr.Row():
        with gr.Column():
            with gr.Tabs():
                with gr.Tab(I18N("draw")):
                    # RGBA: an API caller's layers keep their transparency (RGB would turn it black)
                    sketch = JudgedSketch(
                        value=blank_sketch(),
                        canvas_size=(SKETCH_SIZE, SKETCH_SIZE),
                        fixed_canvas=True,
                        height=SKETCH_SIZE + 62,
                        image_mode="RGBA",
                        type="numpy",
                        layers=False,
                        transforms=(),
                        sources=(),
                        elem_id="sketch",
                        label=I18N("draw"),
                        brush=gr.Brush(default_size=10, colors=["#000000"], color_mode="fixed"),
                        eraser=gr.Eraser(default_size=14),
                    )
                    clear_btn = gr.Button(I18N("clear"), size="sm")
                with gr.Tab(I18N("upload")):
                    image = JudgedImage(
                        type="filepath",
                        image_mode=None,  # as uploaded: RGB would turn a PNG's transparent background black
                        sources=("upload", "clipboard", "webcam"),
                        label=I18N("upload"),
                        elem_id="upload",
                        height=300,
                    )
                    if examples:
                        gr.Examples(examples, inputs=image, label=I18N("examples"))
        with gr.Column():
            label = gr.Label(num_top_classes=5, label=I18N("prediction"), elem_id="prediction")
            # png: the grids are small greyscale images, which png encodes 3x faster than the default webp
            features = gr.Gallery(label=I18N("features"), columns=4, height=220, object_fit="contain", format="png")
    # the pad's own clear, then its brush: a new value set from the server left the pad busy after a stroke
    clear_btn.click(None, None, None, js=CLEAR_PAD_JS)
    return SimpleNamespace(label=label, features=features, sketch=sketch, image=image)


def teach_tab() -> SimpleNamespace:
    """One labelled step on the learner's image, mixing it in, or its gradients with shortcuts on vs off."""
    with gr.Row():
        # the image a step will be taken on, as the network gets it (32x32): the latest drawing or upload
        # no buttons: in a 128-px box they sat over the label; CSS draws the 32 px as big blocks (launch's css)
        preview = gr.Image(
            label=I18N("teach_image"), interactive=False, height=128, width=128, elem_id="teach_image", scale=0,
            buttons=[],
        )  # fmt: skip
        true_label = gr.Dropdown([], label=I18N("true_label"), elem_id="true_label")
        layer = gr.Dropdown([], label=I18N("layer"))
    with gr.Row():
        teach_btn = gr.Button(I18N("teach_step"), variant="primary", elem_id="teach_step")
        mix_btn = gr.Button(I18N("mix"))
        compare_btn = gr.Button(I18N("compare"), elem_id="compare")
    teach_text = gr.Markdown()
    with gr.Row():
        grad_tensor = gr.Plot(label=I18N("grad_tensor"))
        grad_norms = gr.Plot(label=I18N("grad_norms"))
    return SimpleNamespace(
        preview=preview, true_label=true_label, layer=layer, teach_btn=teach_btn, mix_btn=mix_btn,
        compare_btn=compare_btn, teach_text=teach_text, grad_tensor=grad_tensor, grad_norms=grad_norms,
    )  # fmt: skip


def data_tab() -> SimpleNamespace:
    """Train on a zip of class folders; download, load or push the model."""
    with gr.Row():
        with gr.Column():
            zip_file = gr.File(label=I18N("zip"), file_types=[".zip"], type="filepath")
            zip_btn = gr.Button(I18N("use_zip"), size="sm")
        with gr.Column():
            download_btn = gr.Button(I18N("download"), size="sm")
            model_file = gr.File(label=I18N("model_file"), file_types=[".zip"], type="filepath")
            run_btn = gr.Button(I18N("download_run"), size="sm")
            run_file = gr.File(label=I18N("run_file"), interactive=False)
            repo = gr.Textbox(label=I18N("repo"), placeholder="you/resnet-playground")
            load_btn = gr.Button(I18N("load"), size="sm")
            token = gr.Textbox(label=I18N("token"), type="password")
            push_btn = gr.Button(I18N("push"), size="sm")
            push_text = gr.Markdown()
    download_btn.click(download_model, None, model_file, api_name="download_model")
    run_btn.click(download_run, None, run_file, api_name="download_run")
    push_btn.click(push_model, [repo, token], [push_text, token], api_name="push_model")
    return SimpleNamespace(zip_file=zip_file, zip_btn=zip_btn, model_file=model_file, repo=repo, load_btn=load_btn)


def twins_tab() -> list:
    """A residual net and its plain twin, side by side, with its own controls and charts."""
    gr.Markdown(I18N("twins_intro"))
    with gr.Row():
        twin_arch = gr.Dropdown(
            architecture_choices(), value="ResNet-20", label=I18N("architecture"), info=I18N("twin_on_reset"),
            min_width=160,
        )  # fmt: skip
        twin_seed = gr.Number(0, label=I18N("seed"), info=I18N("twin_on_reset"), min_width=80)  # the session checks it
        twin_n = gr.Number(50, label=I18N("n"), elem_id="twin_n", min_width=80)  # steps_asked checks it
        twin_reset_btn = gr.Button(I18N("reset"), variant="stop", elem_id="twin_reset", min_width=80)
        twin_step_btn = gr.Button(I18N("step_n"), variant="primary", elem_id="twin_step", min_width=80)
        twin_play_btn = gr.Button(I18N("play"), variant="primary", elem_id="twin_play", min_width=80)
        twin_pause_btn = gr.Button(I18N("pause"), elem_id="twin_pause", min_width=80)
    twin_status = gr.Markdown(elem_id="twin_status")
    twin_loss, twin_acc = chart_row("twin-loss", "twin-acc")
    twin_depth, twin_routes = chart_row("twin-depth", "twin-routes")
    lesion_btn = gr.Button(I18N("lesion"), elem_id="lesion")
    lesion_plot = gr.Plot(label=I18N("lesion"))

    twin_out = [twin_loss, twin_acc, twin_depth, twin_routes, twin_status]
    twin_reset_btn.click(twin_reset, [twin_arch, twin_seed], twin_out, api_name="twin_reset", **TRAIN)
    built = [twin_arch, twin_seed]  # what a first click builds
    twin_step_btn.click(twin_step_n, [twin_n, *built], twin_out, api_name="twin_step_n", **TRAIN)
    twin_play_btn.click(twin_play, built, twin_out, api_name="twin_play", **TRAIN)
    twin_pause_btn.click(twin_pause, None, twin_out, api_name="twin_pause")  # no `cancels`: as the main Pause
    lesion_btn.click(twin_lesions, built, [lesion_plot, *twin_out], api_name="lesions", **TRAIN)
    return twin_out


def wire_training(demo, ui: SimpleNamespace, seen, taught, own, last_x: gr.State):
    """The events that train the learner's session: each updates the charts, the status and the prediction.
    Returns the page's first event, after which the page's learner is known."""
    train_out = [*ui.charts, ui.status, seen.label, ui.switch_chart]
    setup_out = [*train_out, ui.blocks_on, ui.all_on, taught.true_label, taught.layer]
    switch_out = [*setup_out, last_x, ui.dataset, taught.preview]  # a new session: its classes, blocks and dataset
    settings = [ui.architecture, ui.seed, ui.optimizer, ui.lr, ui.batch, last_x]
    # progress shows on the status line only: a spinner over the charts and the prediction at every step of Play
    # would hide what the learner is watching (and over an empty prediction, it looks like one is coming)
    busy = {"show_progress_on": ui.status}
    # a browser's page first ties itself to its learner key (kept across reloads), then shows that learner's run;
    # an API client calls /load alone and is keyed by its connection
    browser_key = gr.BrowserState("", storage_key="resnet-playground-learner")
    adopted = demo.load(adopt, browser_key, browser_key, api_visibility="private")
    adopted.then(on_load, last_x, setup_out, api_name="load")
    predict_out = [last_x, seen.label, seen.features, taught.preview]
    seen.sketch.input(
        predict, seen.sketch, predict_out, api_name="predict_sketch", concurrency_limit=4, concurrency_id="predict"
    )
    seen.image.change(predict, seen.image, predict_out, api_name="predict_image", concurrency_id="predict")
    ui.reset_btn.click(reset, [ui.dataset, *settings], switch_out, api_name="reset", **TRAIN)
    own.zip_btn.click(use_zip, [own.zip_file, *settings], switch_out, api_name="use_zip", **TRAIN)
    own.load_btn.click(load_model, [own.model_file, own.repo, last_x], switch_out, api_name="load_model", **TRAIN)
    # on Enter or leaving the box, not per keystroke: typing "0.01" passes through "0"
    gr.on(
        [ui.optimizer.input, ui.lr.submit, ui.lr.blur, ui.batch.submit, ui.batch.blur],
        configure,
        [ui.optimizer, ui.lr, ui.batch],
        [ui.optimizer, ui.lr, ui.batch],
        api_name="configure",
    )
    ui.step_btn.click(step, last_x, train_out, api_name="step", **TRAIN, **busy)
    ui.step_n_btn.click(step_n, [ui.n_steps, last_x], train_out, api_name="step_n", **TRAIN, **busy)
    ui.play_btn.click(play, last_x, train_out, api_name="play", **TRAIN, **busy)
    # no `cancels`: an update the run had sent before Pause could reach the page after Pause's answer (a chart a
    # point behind the status, seen in chromium); POOL.stop ends the run within a turn and its stream says so last
    ui.pause_btn.click(pause, last_x, train_out, api_name="pause", **busy)
    ui.all_on.input(
        set_all_shortcuts, [ui.all_on, last_x], [*train_out, ui.blocks_on], api_name="all_shortcuts", **busy
    )
    ui.blocks_on.input(set_block_shortcuts, [ui.blocks_on, last_x], [*train_out, ui.all_on], api_name="block_shortcuts")
    teach_out = [*train_out, taught.teach_text, taught.grad_tensor, taught.grad_norms]
    taught.teach_btn.click(teach_step, [last_x, taught.true_label, taught.layer], teach_out, api_name="teach", **TRAIN)
    taught.mix_btn.click(mix, [last_x, taught.true_label], taught.teach_text, api_name="mix")
    taught.compare_btn.click(
        compare,
        [last_x, taught.true_label, taught.layer],
        [taught.teach_text, taught.grad_tensor, taught.grad_norms],
        api_name="compare",
        **TRAIN,
    )
    return adopted


# the Teach tab's 32x32 picture fills its box in big pixels (a browser draws it at 32 px, smoothed, otherwise)
CSS = "#teach_image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"


def launch(demo: gr.Blocks, **kwargs):
    """Launch as a public app should be: bounded uploads, messages instead of tracebacks, only assets served."""
    # gradio rebuilds a pandas summary of up to 10,000 past events after every event, for a monitoring page this
    # app does not enable: with a room of learners that is CPU and GIL taken from their requests. Every 1,000th.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
    # a queue as long as the room can use, and a thread for each seat's streaming run plus the page's other events
    demo.queue(default_concurrency_limit=8, max_size=4 * POOL.max_sessions)
    kwargs.setdefault("max_threads", POOL.max_sessions + 16)
    # run_history off: gradio would keep every call's inputs in the browser, the Hub token of a push included
    kwargs.setdefault("run_history", False)
    kwargs.setdefault("mcp_server", mcp_available())
    return demo.launch(
        css=CSS,
        i18n=I18N,
        max_file_size=f"{zipdata.MAX_UPLOAD_MB}mb",
        show_error=True,
        allowed_paths=[str(ASSETS)],
        **kwargs,
    )


def warm_up() -> None:
    """Pay the server's one-time costs before the first learner comes: render the built-in dataset (~3 s), the
    imports an optimizer makes when first built (~2 s), the first step's and prediction's kernel choices. Left to
    the first requests, they hold the GIL while a whole room that joined at once waits behind them."""
    shipped_accuracy()
    session = first_session()
    session.step(1)
    example = next(ASSETS.glob("examples/*.png"), None)
    view(session, inference.to_tensor(example) if example else None)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    if PROCESSES > 1 and not BEHIND_FRONT:
        host, port = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), int(os.environ.get("GRADIO_SERVER_PORT", 7860))
        front.serve(__file__, PROCESSES, host, port)
    else:
        if BEHIND_FRONT:
            front.share_card(DEVICE, PROCESSES)
        warm_up()
        demo = build_demo()
        # what is loaded by now (torch, gradio, the page: ~540k objects) is never garbage: full collections skip it
        # (one took 190 ms of a 2-vCPU Xeon with the GIL held, stalling every learner; frozen, ~0)
        gc.freeze()
        launch(demo)
