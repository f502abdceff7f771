"""The data-percentage study's table and figure, from rows (pure: no Ray, no training).

A row: {"fraction": 0.25, "mAP": .., "rank1": .., "mINP": ..} plus, when known, "arch",
"identities", "images" and the fine-tuned "ft_mAP", "ft_rank1", "ft_mINP". Columns absent from
every row are left out of the table, so `cion-ray run`'s study (one backbone, no counts) and
`cion-ray scale` (several backbones, counts, fine-tuning) share one implementation.
"""
from __future__ import annotations

import io

from cion_ray.io import fs

# (key, CSV header, Markdown header)
COLUMNS = (("arch", "arch", "backbone"), ("fraction", "fraction", "data"), ("identities", "identities", "identities"),
           ("images", "images", "images"), ("mAP", "mAP", "mAP"), ("rank1", "rank1", "rank-1"),
           ("mINP", "mINP", "mINP"), ("ft_mAP", "ft_mAP", "fine-tuned mAP"),
           ("ft_rank1", "ft_rank1", "fine-tuned rank-1"), ("ft_mINP", "ft_mINP", "fine-tuned mINP"))
METRICS = {"mAP", "rank1", "mINP", "ft_mAP", "ft_rank1", "ft_mINP"}


def _columns(rows: list[dict]) -> list[tuple[str, str, str]]:
    return [c for c in COLUMNS if any(c[0] in r for r in rows)]


def sort_rows(rows: list[dict]) -> list[dict]:
    """Backbone by backbone (in the order they first appear), smallest fraction first."""
    order = {a: i for i, a in enumerate(dict.fromkeys(r.get("arch", "") for r in rows))}
    return sorted(rows, key=lambda r: (order[r.get("arch", "")], r["fraction"]))


def _cell(key: str, v, digits: int, md: bool) -> str:
    if v is None:
        return "" if not md else "-"
    if key == "fraction":
        return f"{v * 100:g}%" if md else f"{v:g}"
    if key in METRICS:
        return f"{v:.{digits}f}"
    return str(v)


def table_csv(rows: list[dict]) -> str:
    cols = _columns(rows)
    return ",".join(c[1] for c in cols) + "\n" + "".join(
        ",".join(_cell(c[0], r.get(c[0]), 4, False) for c in cols) + "\n" for r in sort_rows(rows))


def table_markdown(rows: list[dict]) -> str:
    cols = _columns(rows)
    head = "| " + " | ".join(c[2] for c in cols) + " |\n"
    rule = "|" + "|".join(":---" if c[0] == "arch" else "---:" for c in cols) + "|\n"
    return head + rule + "".join("| " + " | ".join(_cell(c[0], r.get(c[0]), 3, True) for c in cols) + " |\n"
                                 for r in sort_rows(rows))


def study_png(rows: list[dict], title: str = "", label: str = "") -> bytes:
    """mAP and rank-1 (in %) against the percentage of identities used, one line per backbone
    (`label` names rows without "arch"); fine-tuned results dashed in the same colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sort_rows(rows)
    series: dict[str, list[dict]] = {}
    for r in rows:
        series.setdefault(r.get("arch") or label, []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8), dpi=120)
    for ax, (key, name) in zip(axes, (("mAP", "mAP"), ("rank1", "rank-1"))):
        for i, (arch, rs) in enumerate(series.items()):
            colour = f"C{i}"
            x = [r["fraction"] * 100 for r in rs]
            pts = [(a, r[key] * 100) for a, r in zip(x, rs) if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", color=colour, label=arch or name)
            ft = [(a, r[f"ft_{key}"] * 100) for a, r in zip(x, rs) if r.get(f"ft_{key}") is not None]
            if ft:
                ax.plot(*zip(*ft), "s--", color=colour, label=f"{arch} fine-tuned" if arch else "fine-tuned")
        ax.set_xticks(sorted({r["fraction"] * 100 for r in rows}))
        ax.set_xlabel("curated identities used for pre-training (%)")
        ax.set_ylabel(f"held-out {name} (%)")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_study(out: str, rows: list[dict], stem: str, title: str = "", label: str = "") -> dict[str, str]:
    """<out>/<stem>.csv, .md and .png; -> {file name: URI}."""
    files = {f"{stem}.{ext}": fs.join(out, f"{stem}.{ext}") for ext in ("csv", "md", "png")}
    fs.write_bytes_atomic(files[f"{stem}.csv"], table_csv(rows).encode())
    fs.write_bytes_atomic(files[f"{stem}.md"], table_markdown(rows).encode())
    fs.write_bytes_atomic(files[f"{stem}.png"], study_png(rows, title, label))
    return files
