"""A learner's run, taken away as CSV, reads back as the run it was."""

import csv
import io

from resnet.runlog import history_csv
from resnet.session import Session, TrainConfig


def test_the_run_reads_back_from_its_csv(one_thread):
    s = Session(TrainConfig(batch_size=8, eval_every=2, eval_size=20, precision="fp32"))
    s.step(2)
    s.set_shortcut(False)
    s.configure(lr=1e3)
    s.step(1)  # rejected: the update is far larger than the weights
    rows = list(csv.DictReader(io.StringIO(history_csv(s.history))))
    assert [int(r["step"]) for r in rows] == [1, 2]
    first, second = rows
    assert float(first["loss"]) == s.history.steps[0]["loss"]  # full precision, not a rounded display
    assert float(second["held_out_acc"]) == s.history.evals[0]["acc"] and first["held_out_acc"] == ""
    assert float(second["grad_norm/stem"]) == s.history.steps[1]["grad_norm"]["stem"]
    assert "shortcut off: all blocks" in second["events"] and "rejected" in second["events"]
    assert len([c for c in rows[0] if c.startswith("grad_norm/")]) == len(s.layers)
