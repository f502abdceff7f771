"""Training curves of a pre-training run (`curves.png` next to metrics.json): the loss split into
teacher entropy + KL against ln(out_dim) (where uniform collapse sits), the entropy of the
batch-mean teacher distribution (one dominating dimension drives it to 0), K and the
learning rate, throughput, and with --eval-data the teacher's mAP / rank-1 / mINP."""
from __future__ import annotations

import io
import math


def training_curves_png(history: list[dict], out_dim: int, title: str = "") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [m["epoch"] for m in history]

    def col(k):
        return [m.get(k, float("nan")) for m in history]

    evals = [m for m in history if "eval_mAP" in m]
    fig, ax = plt.subplots(2, 3 if evals else 2, figsize=(16 if evals else 11, 7), constrained_layout=True,
                           squeeze=False)
    a = ax[0, 0]
    a.plot(ep, col("loss"), "o-", label="loss")
    a.plot(ep, col("teacher_entropy"), "s--", label="teacher entropy")
    a.plot(ep, col("kl"), "^--", label="KL (student's part)")
    a.axhline(math.log(out_dim), color="grey", lw=0.8, ls=":", label=f"ln {out_dim} (uniform)")
    a.set(title="loss = teacher entropy + KL", xlabel="epoch", ylabel="nats")
    a.legend(fontsize=8)
    a = ax[0, 1]
    a.plot(ep, col("teacher_mean_entropy"), "o-", color="C3", label="entropy of batch-mean teacher")
    a.plot(ep, col("teacher_entropy"), "s--", color="C1", label="mean teacher entropy")
    a.axhline(math.log(out_dim), color="grey", lw=0.8, ls=":")
    a.set(title="collapse watch: both -> ln D uniform, batch-mean -> 0 one-dim", xlabel="epoch", ylabel="nats")
    a.title.set_fontsize(9)
    a.legend(fontsize=8)
    a = ax[1, 0]
    a.plot(ep, col("lr"), "o-", label="lr")
    a.set(xlabel="epoch", ylabel="lr")
    b = a.twinx()
    b.step(ep, col("k"), where="post", color="C4", label="K (images per identity)")
    b.set_ylabel("K")
    b.set_ylim(0, max([1] + col("k")) + 1)
    a.legend(loc="upper left", fontsize=8)
    b.legend(loc="lower left", fontsize=8)
    mom = col("momentum")
    a.set_title(f"schedules (teacher momentum {mom[0]:.4f} -> {mom[-1]:.4f})", fontsize=10)
    a = ax[1, 1]
    a.bar(ep, col("images_per_s"), color="C0")
    a.set(title="throughput", xlabel="epoch", ylabel="images / s (all workers)")
    if evals:
        a = ax[0, 2]
        ee = [m["epoch"] for m in evals]
        for key, name, c in (("eval_mAP", "mAP", "C0"), ("eval_rank1", "rank-1", "C1"), ("eval_mINP", "mINP", "C2")):
            a.plot(ee, [m[key] for m in evals], "o-", color=c, label=name)
            if f"{key}_init" in evals[0]:
                a.axhline(evals[0][f"{key}_init"], color=c, lw=0.8, ls=":")
        a.set(title="teacher retrieval (dotted: before training)", xlabel="epoch", ylim=(0, 1))
        a.legend(fontsize=8)
        ax[1, 2].axis("off")
    if title:
        fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
