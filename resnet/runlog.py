"""A learner's run as one CSV table they can take away: a row per step with loss, accuracy, learning rate, the
held-out figures where measured, every layer's gradient norm, and what happened (shortcut switches, rejected
steps). Wide and flat, with a `step` column first, as spreadsheets and trackio's CSV import read it.
"""

import csv
import io


def history_csv(history) -> str:
    """`Session.history` -> CSV text (thinned runs keep the steps they kept)."""
    rows: dict[int, dict] = {}
    layers: list[str] = []
    for r in history.steps:
        layers = layers or list(r["grad_norm"])
        row = rows.setdefault(r["step"], {"step": r["step"]})
        row.update(loss=r["loss"], acc=r["acc"], lr=r["lr"], shortcuts_on=sum(r["shortcuts"]))
        row.update({f"grad_norm/{name}": value for name, value in r["grad_norm"].items()})
    for e in history.evals:
        rows.setdefault(e["step"], {"step": e["step"]}).update(held_out_loss=e["loss"], held_out_acc=e["acc"])
    for e in history.events:
        row = rows.setdefault(e["step"], {"step": e["step"]})
        row["events"] = "; ".join(filter(None, [row.get("events"), e["text"]]))
    columns = ["step", "loss", "acc", "lr", "shortcuts_on", "held_out_loss", "held_out_acc"]
    columns += [f"grad_norm/{name}" for name in layers] + ["events"]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[step] for step in sorted(rows))
    return out.getvalue()
