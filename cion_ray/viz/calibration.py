"""`calibration.png`: the same- and different-person distance distributions a curation run
measured on its own data, with the thresholds it used (solid) and those configured (dashed)."""
from __future__ import annotations

import io

import numpy as np


def calibration_png(d, cal, title: str = "") -> bytes:
    """d: calibrate.Distances (pooled); cal: calibrate.Calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), constrained_layout=True)
    panels = [("sample level: a sample against a tracklet's centroid", d.same_sample, d.diff_sample,
               "own tracklet (same person)", "a tracklet in the same frame (another person)", ["radius"]),
              ("centroid level: tracklets against tracklets", d.same_centroid, d.diff_centroid,
               "a tracklet's two halves (same person)", "tracklets in the same frame (different people)",
               ["margin", "merge", "threshold", "drift"])]
    colours = {"radius": "C3", "margin": "C4", "merge": "C2", "threshold": "C3", "drift": "C5"}
    for ax, (name, same, diff, same_label, diff_label, keys) in zip(axes, panels):
        hi = float(max(np.quantile(diff, 0.99) if len(diff) else 1.0, 0.3))
        bins = np.linspace(0.0, hi, 60)
        if len(same):
            ax.hist(np.clip(same, 0, hi), bins=bins, density=True, alpha=0.55, color="C0",
                    label=f"{same_label}, n={len(same)}")
        if len(diff):
            ax.hist(np.clip(diff, 0, hi), bins=bins, density=True, alpha=0.55, color="C1",
                    label=f"{diff_label}, n={len(diff)}")
        for k in keys:
            ax.axvline(cal.thresholds[k], color=colours[k], lw=1.8,
                       label=f"{k} {cal.thresholds[k]:.3f}" + (" (held down)" if k in cal.bounded else ""))
            if cal.applied and abs(cal.fixed[k] - cal.thresholds[k]) > 1e-9:
                ax.axvline(cal.fixed[k], color=colours[k], lw=1.0, ls="--", label=f"{k} configured {cal.fixed[k]:.3f}")
        ax.set(title=name, xlabel="cosine distance", ylabel="density")
        ax.title.set_fontsize(10)
        ax.legend(fontsize=7)
    st = cal.stats
    how = (f"calibrated against the tuning worlds: same-person spread {st['s']:.2f}x, other people's samples "
           f"{st['ds']:.2f}x, centroids {st['dc']:.2f}x" if cal.applied else cal.reason)
    fig.suptitle((title + ": " if title else "") + how, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
