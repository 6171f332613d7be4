"""Every guided experiment, run from scratch at its fast settings, shows the effect its text claims; the before/after
readout against numbers worked out by hand; a learner's own session reset and driven a few steps at a time; and the
texts: all there in English and Chinese, the Chinese free of English beyond layer names, network names and numbers.

The fast runs are real training runs (the shapes dataset, seeded): about a minute in all on 2 shared CPU cores.
"""

import math
import re

import pytest

from resnet import charts, guided
from resnet.errors import UserError
from resnet.guided import EXPERIMENTS, GuidedRun, before_after, effect
from resnet.model import notebook_config
from resnet.session import History, Session, TrainConfig
from resnet.twin import TwinSession

pytestmark = pytest.mark.usefixtures("one_thread")

# What Chinese text may spell in Latin letters and digits: network and layer names, and numbers (1e-05 included)
ALLOWED = re.compile(r"ResNet-\d+|stem|fc|block\d+(?:\.conv\d|\.shortcut)?|\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def english_words(zh: str) -> list[str]:
    """The Latin words of a text that are neither names nor numbers; format placeholders ({loss:.2f}) left out."""
    words = re.findall(r"[A-Za-z0-9][A-Za-z0-9._+-]*", re.sub(r"\{[^}]*\}", " ", zh))
    return [w for w in words if not ALLOWED.fullmatch(w.rstrip("."))]


@pytest.mark.parametrize("experiment_id", list(EXPERIMENTS))
def test_a_fast_run_shows_the_claimed_effect(experiment_id):
    result = guided.run(experiment_id, fast=True)

    assert result["experiment"] == experiment_id and result["fast"] is True
    for check in result["checks"]:
        assert math.isfinite(check["value"]), check
        assert check["holds"], f"{check['what']} = {check['value']:.4g}, want {check['op']} {check['threshold']}"
    assert result["holds"] and (result["value"], result["threshold"]) == (
        result["checks"][0]["value"],
        result["checks"][0]["threshold"],
    )
    # the readout carries the run's numbers, and says in both languages that the claim held
    en, zh = result["readout"]["en"], result["readout"]["zh"]
    assert en.endswith("The claim holds.") and zh.endswith("。结论成立。")  # no space between Chinese sentences
    assert not english_words(zh), zh
    assert not re.search(r"\{\w", en + zh), "a placeholder was left unfilled"


def test_the_numbers_behind_each_claim():
    """Beyond the thresholds, what each claim rests on, on the fast runs' data (a second look, cheap ones only)."""
    lr = GuidedRun("lr_1000", fast=True).finish()
    phases = lr.records
    assert [r["kind"] for r in phases] == ["train", "lr", "train", "lr", "train"]
    rejected = phases[2]
    # the step at lr 1000 left every weight bit for bit, the steps before it did move them, and the count stood still
    assert rejected["rejected"] == 1 and rejected["done"] == 0 and rejected["moved"] == 0.0
    assert phases[0]["moved"] > 0 and rejected["to"] == rejected["step"] == phases[0]["to"]
    assert "rejected" in rejected["messages"][0] and lr.session.config.lr == pytest.approx(1e-3)
    # what its "watch" text points at: the loss chart has no point at the rejected step, an orange dashed line there
    loss = charts.loss_figure(lr.history())
    assert loss["data"][0]["x"] == list(range(1, lr.session.step_count + 1))  # a point per step taken, no more
    lines = [s for s in loss["layout"]["shapes"] if s["x0"] == rejected["step"]]
    assert (charts.EVENT_COLOURS["rejected"], "dash") in [(s["line"]["color"], s["line"]["dash"]) for s in lines]
    # ... seen: drawn after the grey lr lines at the same step (before, the lr line back to 0.001 covered it), named
    assert len(lines) == 3 and lines[-1]["line"]["color"] == charts.EVENT_COLOURS["rejected"]
    named = [a for a in loss["layout"]["annotations"] if a["x"] == rejected["step"]]
    assert [a["text"] for a in named] == ["rejected"]
    assert charts.translate(loss, "zh")["layout"]["annotations"][-1]["text"] == "被拒绝"

    drawing = GuidedRun("drawing_gradients", fast=True).finish()
    grads = drawing.records[0]
    assert grads["step"] == 0 and drawing.session.step_count == 0  # a fresh net, and no step taken
    on, off = grads["on"]["grad_norm"], grads["off"]["grad_norm"]
    assert set(on) == set(off) and off["block10.shortcut"] == 0  # the plain net's projections get no gradient
    assert effect("drawing_gradients", drawing)["numbers"]["stem_ratio"] == pytest.approx(off["stem"] / on["stem"])


def test_a_log_axis_labels_its_ticks_in_full_over_a_short_range_and_only_powers_of_ten_over_a_long_one():
    """The before/after bars (0.1 to 0.5) labelled 0.2 and 0.5 as a bare "2" and "5" under the "1" of 0.1, read as
    two and five; labelling every digit in full over six decades (the gradient chart) overlapped."""
    short = charts.grad_norm_bars_figure({"before": {"stem": 0.1, "fc": 0.5}, "after": {"stem": 0.2, "fc": 0.4}})
    long = charts.grad_norm_bars_figure({"off": {"stem": 174.0, "fc": 0.0003}})
    assert short["layout"]["yaxis"]["minorloglabels"] == "complete"
    assert long["layout"]["yaxis"]["minorloglabels"] == "none"
    assert "minorloglabels" not in charts.loss_figure(History(2))["layout"]["yaxis"]  # linear, and empty


def test_before_after_against_hand_worked_means():
    h = History(100)
    for step in range(1, 8):
        after = step > 4  # the switch comes after step 4
        h.add_step(
            {
                "step": step,
                "loss": 3.0 + step if after else 1.0 + step,
                "acc": 0.5,
                "grad_norm": {
                    "stem": 4.0 if after else 2.0,
                    "block2.shortcut": 0.0 if after else 0.25,  # switched off: no gradient after
                    "block3.shortcut": 0.5 if after else 0.0,  # switched on
                },
            }
        )
    h.add_event(4, "shortcut", "shortcut off: all blocks")

    ba = before_after(h, 4, k=2)

    assert ba["counts"] == [2, 2] and ba["step"] == 4
    assert ba["loss"] == {"before": 4.5, "after": 8.5, "ratio": 8.5 / 4.5}  # steps 3, 4 (4, 5); steps 5, 6 (8, 9)
    assert ba["acc"]["ratio"] == 1.0
    assert ba["grad_norm"]["stem"] == {"before": 2.0, "after": 4.0, "ratio": 2.0}
    assert ba["grad_norm"]["block2.shortcut"]["ratio"] == 0.0
    assert ba["grad_norm"]["block3.shortcut"]["ratio"] is None  # nothing before: no ratio, not a division by zero
    assert before_after({"steps": h.steps}, 4, k=2) == ba  # the plain-data history reads the same
    assert before_after(h, 4, k=50)["counts"] == [4, 3]  # fewer steps than k: all there are
    with pytest.raises(UserError, match="both sides"):
        before_after(h, 7)


def test_a_learners_session_is_reset_to_the_experiment_and_driven_step_by_step():
    session = Session(TrainConfig(lr=0.05, batch_size=8, eval_every=0), notebook_config())
    session.step(1)
    run = GuidedRun("lr_1000", fast=True, session=session)

    assert run.session is session and session.step_count == 0 and not session.history.steps
    assert session.model_config.depth == 8 and session.config.lr == 1e-3 and session.config.batch_size == 16
    reports = []
    while not run.done:
        reports.append(run.advance(2))
    # at most 2 steps at a time, every phase in order, the charts' history filled as it went
    steps = [r["steps"] for r in reports]
    assert steps == sorted(steps) and all(b - a <= 2 for a, b in zip([0, *steps], steps))
    assert steps[-1] == run.setup.steps == 6 and reports[-1]["done"]
    assert [r["phase"] for r in run.records] == list(range(5)) and len(session.history.steps) == 5
    assert effect("lr_1000", run)["holds"]

    with pytest.raises(UserError, match="TwinSession"):
        GuidedRun("lesion", fast=True, session=session)
    with pytest.raises(UserError, match="not finished"):
        effect("lr_1000", GuidedRun("lr_1000", fast=True))
    with pytest.raises(UserError, match="unknown experiment"):
        GuidedRun("nope")


def test_a_twin_experiment_streams_both_nets():
    twins = TwinSession(TrainConfig(eval_every=0), notebook_config())
    run = GuidedRun("plain_vs_residual", fast=True, session=twins)
    report = run.advance(3)
    assert report["steps"] == 3 and not report["done"]
    assert {net: len(h.steps) for net, h in run.history().items()} == {"residual": 3, "plain": 3}
    assert twins.plain.shortcuts == [False] * 27 and twins.residual.model_config.depth == 56


@pytest.mark.parametrize("fast", [False, True])
def test_every_text_is_there_in_english_and_chinese(fast):
    for experiment in EXPERIMENTS.values():
        texts = experiment.texts(fast)
        assert set(texts) == {"title", "setup", "watch", "expect"}
        readout = {"readout": {"en": experiment.readout.en, "zh": experiment.readout.zh}}  # templates: numbers later
        for key, text in {**texts, **readout}.items():
            en, zh = text["en"].strip(), text["zh"].strip()
            assert en and zh, (experiment.id, key)
            assert re.search(r"[\u4e00-\u9fff]", zh) and not re.search(r"[\u4e00-\u9fff]", en), (experiment.id, key)
            assert not english_words(zh), (experiment.id, key, english_words(zh))
    assert english_words("stem 层和 block3.conv2 层，ResNet-56，1e-05") == []
    assert english_words("梯度 norm") == ["norm"]  # the check itself can fail


def test_the_registry_holds_what_the_app_offers():
    assert {"shortcuts_off", "plain_vs_residual", "lesion", "lr_1000", "drawing_gradients"} <= set(EXPERIMENTS)
    for e in EXPERIMENTS.values():
        assert e.full.layers >= 20 or e.id == "lr_1000"
        assert e.checks and e.chart in ("loss", "twin_loss", "lesions", "gradient_bars")
    assert EXPERIMENTS["shortcuts_off"].full.layers >= 20
    assert EXPERIMENTS["plain_vs_residual"].full.layers == 56 and EXPERIMENTS["plain_vs_residual"].twin
    x, y = guided.example("star", ("circle", "star"))
    assert x.shape == (1, 3, 32, 32) and y.tolist() == [1]
    with pytest.raises(UserError, match="no class"):
        guided.example("star", ("circle",))
