"""The comparison's outputs: one row per arm (mean and spread over seeds), as Markdown and CSV,
a bar chart (compare.png) and the held-out mAP of the distillation arms per epoch (curves.png)."""
from __future__ import annotations

import io
from collections import defaultdict

import numpy as np

from cion_ray.compare.config import LABELS, ArmResult

COLUMNS = (("mAP", "mAP"), ("rank-1", "rank1"), ("mINP", "mINP"))


def summarise(results: list[ArmResult], order: tuple[str, ...]) -> list[dict]:
    """One row per arm, in `order`: mean and standard deviation over seeds of each kNN metric
    (and of the fine-tuned ones when present), images seen, seeds, seconds."""
    by_arm: dict[str, list[ArmResult]] = defaultdict(list)
    for r in results:
        by_arm[r.arm].append(r)
    rows = []
    for arm in order:
        rs = by_arm.get(arm)
        if not rs:
            continue
        row = {"arm": arm, "label": LABELS[arm], "seeds": [r.seed for r in rs], "images_seen": rs[0].images_seen,
               "seconds": float(np.mean([r.seconds for r in rs]))}
        for prefix, part in (("", "metrics"), ("ft_", "finetuned")):
            for _, key in COLUMNS:
                vals = [getattr(r, part)[key] for r in rs if key in getattr(r, part)]
                if vals:
                    row[f"{prefix}{key}"] = float(np.mean(vals))
                    row[f"{prefix}{key}_std"] = float(np.std(vals))
        rows.append(row)
    return rows


def _cell(row: dict, key: str) -> str:
    if key not in row:
        return "-"
    s = f"{100 * row[key]:.1f}"
    return s + (f" ± {100 * row[key + '_std']:.1f}" if len(row["seeds"]) > 1 else "")


def table_markdown(rows: list[dict]) -> str:
    fine = any("ft_mAP" in r for r in rows)
    head = ["pre-training data", "kNN mAP", "kNN rank-1", "kNN mINP"] + (["fine-tuned mAP", "fine-tuned rank-1"]
                                                                        if fine else []) + ["images seen"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"]] + [_cell(r, k) for _, k in COLUMNS]
        if fine:
            cells += [_cell(r, "ft_mAP"), _cell(r, "ft_rank1")]
        cells.append(f"{r['images_seen']:,}" if r["images_seen"] else "0")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_csv(rows: list[dict]) -> str:
    keys = ["arm", "label", "images_seen"] + [k for _, c in COLUMNS for k in (c, c + "_std")]
    keys += [k for _, c in COLUMNS for k in ("ft_" + c, "ft_" + c + "_std")]
    lines = [",".join(keys)]
    for r in rows:
        lines.append(",".join(f'"{r[k]}"' if k == "label" else (f"{r[k]:.4f}" if isinstance(r.get(k), float)
                                                                 else str(r.get(k, ""))) for k in keys))
    return "\n".join(lines) + "\n"


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def bar_chart_png(rows: list[dict], title: str = "") -> bytes:
    """kNN mAP and rank-1 per arm (error bars: std over seeds), with fine-tuned mAP when measured;
    a dotted line at the random initialisation's mAP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("mAP", "kNN mAP"), ("rank1", "kNN rank-1")]
    if any("ft_mAP" in r for r in rows):
        series.append(("ft_mAP", "fine-tuned mAP"))
    x = np.arange(len(rows))
    w = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(rows) + 2), 5), constrained_layout=True)
    for i, (key, name) in enumerate(series):
        vals = [100 * r.get(key, np.nan) for r in rows]
        errs = [100 * r.get(key + "_std", 0.0) for r in rows]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * w, vals, w, yerr=errs, capsize=3, label=name)
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, v + 1, f"{v:.0f}", ha="center", fontsize=7)
    rand = next((r for r in rows if r["arm"] == "random"), None)
    if rand is not None:
        ax.axhline(100 * rand["mAP"], color="grey", ls=":", lw=1, label="random init mAP")
    ax.set_xticks(x, [r["label"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="% on the held-out people", ylim=(0, 105), title=title or "pre-training data, same budget")
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def curves_png(results: list[ArmResult], title: str = "") -> bytes:
    """Held-out mAP of the teacher after every epoch, one line per distillation arm and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for r in results:
        h = [m for m in r.history if "eval_mAP" in m]
        if not h:
            continue
        name = f"{LABELS[r.arm]} (seed {r.seed})"
        ax[0].plot([m["epoch"] for m in h], [100 * m["eval_mAP"] for m in h], "o-", label=name)
        ax[1].plot([m["epoch"] for m in r.history], [m["teacher_entropy"] for m in r.history], "o-", label=name)
    ax[0].set(xlabel="epoch", ylabel="held-out mAP (%)", title="teacher retrieval during pre-training")
    ax[1].set(xlabel="epoch", ylabel="nats", title="teacher entropy (collapse watch)")
    for a in ax:
        a.legend(fontsize=7)
    fig.suptitle(title)
    return _png(fig)
