"""Curation rounds' quality, one row per round: the curation's per-level figures against ground
truth (pairwise F1 and NMI of the tracker's tracklets, L1, L2 and L3, where the curate config has
`gt`) and the round's backbone on the held-out split (mAP, rank-1, mINP), as rounds.csv,
rounds.md and rounds.png under the pipeline's output."""
from __future__ import annotations

import io

from cion_ray.curation.report import LEVELS
from cion_ray.io import fs

QUALITY = ("f1", "nmi", "precision", "recall")
RETRIEVAL = ("mAP", "rank1", "mINP")
# the thresholds each round curated with (calibrated to its embedder) -> their columns
THRESHOLDS = {"radius": "radius", "merge": "merge", "margin": "margin", "threshold": "link_threshold",
              "drift": "drift"}
FILES = ("rounds.csv", "rounds.md", "rounds.png")


def round_row(rnd: int, embedder: str, curated: str, curate_metrics: dict, eval_metrics: dict | None,
              run: str = "") -> dict:
    """One round's row. curate_metrics: the pipeline's curate stage metrics (identities, images,
    levels: the curate report's per-level rows; thresholds: those the curation used, calibrated to
    the round's embedder where calibration is on); eval_metrics: the evaluate stage's (mAP, rank1,
    mINP; a study's per_fraction list: its run on the most data stands for the round), None when
    the pipeline does not evaluate."""
    row = {"round": rnd, "embedder": embedder, "curated": curated, "identities": curate_metrics.get("identities"),
           "images": curate_metrics.get("images")}
    levels = curate_metrics.get("levels") or {}
    for level in LEVELS:
        for q in QUALITY:
            row[f"{level}_{q}"] = levels.get(level, {}).get(q)
    thresholds = curate_metrics.get("thresholds") or {}
    for k, column in THRESHOLDS.items():
        row[column] = thresholds.get(k)
    m = eval_metrics or {}
    if m.get("per_fraction"):
        m = max(m["per_fraction"], key=lambda x: x.get("fraction", 1.0))
    for k in RETRIEVAL:
        row[k] = m.get(k)
    row["fraction"] = m.get("fraction", 1.0) if eval_metrics else None
    row["run"] = run
    return row


def csv_text(rows: list[dict]) -> str:
    cols = list(rows[0]) if rows else ["round"]
    return ",".join(cols) + "\n" + "".join(",".join(_cell(r.get(c)) for c in cols) + "\n" for r in rows)


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    s = str(v)
    return f'"{s}"' if "," in s or '"' in s else s


def md_text(rows: list[dict]) -> str:
    """The table a person reads: per-level F1, L3's NMI and the held-out retrieval per round."""
    head = ["round", "embedder", "identities", "images"] + [f"F1 {lv}" for lv in LEVELS] + ["NMI L3", "mAP",
                                                                                              "rank-1"]
    study = any(r.get("fraction") not in (None, 1.0) for r in rows)
    if study:
        head.append("data")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * len(head)) + "|"]
    for r in rows:
        cells = [str(r["round"]), _short(r["embedder"]), _num(r["identities"], "d"), _num(r["images"], "d")]
        cells += [_num(r.get(f"{lv}_f1")) for lv in LEVELS] + [_num(r.get("L3_nmi")), _num(r.get("mAP")),
                                                                _num(r.get("rank1"))]
        if study:
            cells.append("-" if r.get("fraction") is None else f"{r['fraction'] * 100:g}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _num(v, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _short(embedder: str) -> str:
    """cion:<out>/pretrain/<key> -> cion:<key> (the run's folder name says which run)."""
    if embedder.startswith("cion:"):
        return "cion:" + embedder.rstrip("/").rsplit("/", 1)[-1]
    return embedder


def png_bytes(rows: list[dict], title: str) -> bytes:
    """Per-level F1 (left) and held-out mAP / rank-1 (right) against the round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["round"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    drawn = False
    for level, style in zip(LEVELS, ("o:", "s--", "^-.", "D-")):
        ys = [r.get(f"{level}_f1") for r in rows]
        if any(y is not None for y in ys):
            left.plot(x, [float("nan") if y is None else y for y in ys], style, label=level)
            drawn = True
    if drawn:
        left.legend(fontsize=8)
    else:
        left.text(0.5, 0.5, "no ground truth (curate.gt)", ha="center", va="center", transform=left.transAxes)
    left.set_title("curation: pairwise F1 per level", fontsize=10)
    for ax, ylabel in ((left, "F1"), (right, "%")):
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    if any(r.get("mAP") is not None for r in rows):
        right.plot(x, [_pct(r.get("mAP")) for r in rows], "o-", label="mAP")
        right.plot(x, [_pct(r.get("rank1")) for r in rows], "s--", label="rank-1")
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, "not evaluated", ha="center", va="center", transform=right.transAxes)
    right.set_title("held-out retrieval of the round's backbone", fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _pct(v) -> float:
    return float("nan") if v is None else v * 100


def write_rounds(out: str, rows: list[dict], title: str) -> dict[str, str]:
    """rounds.csv, rounds.md and rounds.png under `out` (each one atomic write) -> {name: uri}."""
    files = {name: fs.join(out, name) for name in FILES}
    fs.write_bytes_atomic(files["rounds.csv"], csv_text(rows).encode())
    fs.write_bytes_atomic(files["rounds.md"], md_text(rows).encode())
    fs.write_bytes_atomic(files["rounds.png"], png_bytes(rows, title))
    return files


__all__ = ["round_row", "csv_text", "md_text", "png_bytes", "write_rounds"]
