"""The data-efficiency protocol: fine-tune on nested seeded fractions of the training identities
(10% inside 25% inside ... 100%, pretrain.data.select_identities) with otherwise equal settings,
one run per fraction, and compare the held-out retrieval.

With a budget in epochs a smaller fraction trains for fewer iterations (an epoch is its images /
batch); with `optim.steps` every fraction trains for the same number of iterations.

Outputs: a table (`protocol.csv`, `protocol.md`: one row per fraction) and a plot
(`protocol.png`: mAP and rank-1 against the percentage of identities; several runs, e.g.
backbones or initialisations, on one plot when their tables are given).
"""
from __future__ import annotations

import csv
import io

from cion_ray.errors import CionError
from cion_ray.io import fs

COLUMNS = ("label", "fraction", "percent", "identities", "train_images", "steps", "images_seen", "mAP", "rank1",
           "rank5", "mINP", "mAP_init", "rank1_init")


def parse_fractions(text: str) -> tuple[float, ...]:
    """"0.1,0.25,0.5,1" -> (0.1, 0.25, 0.5, 1.0): fractions in (0, 1], sorted, without repeats."""
    try:
        values = sorted({float(v) for v in str(text).split(",") if v.strip()})
    except ValueError:
        raise CionError(f"--fractions: expected numbers like 0.1,0.25,0.5,1, got {text!r}") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise CionError(f"--fractions: each must be in (0, 1] (a fraction of the identities), got {text!r}")
    return tuple(values)


def fraction_name(fraction: float) -> str:
    """0.1 -> "fraction-10pc": the run folder of one fraction."""
    return f"fraction-{fraction * 100:g}pc"


def protocol_row(label: str, fraction: float, metrics: dict) -> dict:
    """One table row from a run's final metrics (step, images, identities, eval_*)."""
    g = metrics.get
    return {"label": label, "fraction": fraction, "percent": round(fraction * 100, 2),
            "identities": g("identities"), "train_images": g("train_images"), "steps": g("step"),
            "images_seen": g("images"), "mAP": g("eval_mAP"), "rank1": g("eval_rank1"), "rank5": g("eval_rank5"),
            "mINP": g("eval_mINP"), "mAP_init": g("eval_mAP_init"), "rank1_init": g("eval_rank1_init")}


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:g}" if v.is_integer() else f"{v:.4f}"
    return str(v)


def table_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: _fmt(r.get(c)) for c in COLUMNS})
    return buf.getvalue()


def table_markdown(rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def read_table(uri: str) -> list[dict]:
    """protocol.csv (or a run folder holding one) -> its rows, numbers as floats."""
    if not uri.endswith(".csv"):
        uri = fs.join(uri, "protocol.csv")
    if not fs.exists(uri):
        raise CionError(f"{uri}: not found (a data-efficiency run's protocol.csv)")
    rows = list(csv.DictReader(io.StringIO(fs.read_text(uri))))
    if not rows or "mAP" not in rows[0] or "percent" not in rows[0]:
        raise CionError(f"{uri}: not a protocol table (no percent / mAP columns)")
    out = []
    for r in rows:
        out.append({k: (v if k == "label" else (float(v) if v not in ("", None) else None)) for k, v in r.items()})
    return out


def protocol_plot_png(series: dict[str, list[dict]], title: str = "") -> bytes:
    """{label: rows} -> PNG: mAP and rank-1 against the percentage of training identities, one line
    per label (dotted: its initialisation's value, when the rows have it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    ticks = sorted({r["percent"] for rows in series.values() for r in rows})
    for i, (label, rows) in enumerate(series.items()):
        rows = sorted(rows, key=lambda r: r["percent"])
        x = [r["percent"] for r in rows]
        for ax, key in zip(axes, ("mAP", "rank1")):
            ax.plot(x, [r[key] for r in rows], "o-", color=f"C{i}", label=label)
            init = [r.get(f"{key}_init") for r in rows]
            if init and all(v is not None for v in init):
                ax.plot(x, init, ":", color=f"C{i}", lw=1, label=f"{label}, before fine-tuning")
    for ax, name in zip(axes, ("mAP", "rank-1")):
        ax.set(xlabel="training identities (%)", ylabel=name, title=f"{name} after fine-tuning", ylim=(0, 1.02))
        ax.set_xticks(ticks)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def write_protocol(rows: list[dict], out: str, others: list[dict] | None = None, title: str = "") -> dict[str, str]:
    """protocol.csv, protocol.md (this run's rows) and protocol.png (these and `others`, e.g. rows
    read from other runs' tables, one line per label) under `out` -> {name: URI}."""
    uris = {n: fs.join(out, n) for n in ("protocol.csv", "protocol.md", "protocol.png")}
    fs.write_bytes_atomic(uris["protocol.csv"], table_csv(rows).encode())
    fs.write_bytes_atomic(uris["protocol.md"], table_markdown(rows).encode())
    series: dict[str, list[dict]] = {}
    for r in list(rows) + list(others or []):
        series.setdefault(str(r["label"]), []).append(r)
    fs.write_bytes_atomic(uris["protocol.png"], protocol_plot_png(series, title))
    return uris
