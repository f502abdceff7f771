"""Pre-training hyperparameter search (`cion-ray tune pretrain`): the plan, its trials' outcomes,
the outputs. Pure: the Ray side (Tune with ASHA over Ray Train runs, one per trial) is
cion_ray/runtime/tune_pretrain.py.

Layout of `out` (a folder or s3:// prefix):
    search.json       the search's settings and fingerprint (the same command again resumes it)
    search/           Ray Tune's experiment state (Tuner.restore reads it)
    asha.json         ASHA's rung records (Tune does not save its scheduler's state)
    trials/<id>/      one pre-training run per trial: train/ (Ray Train storage, checkpoints),
                      metrics.json, log.txt (rank 0's messages), tensorboard/
    results.csv / results.md   one row per trial: params, best and last metric, epochs, status
    best.yaml         the whole pre-training config with the best trial's params (no data / out)
    curves.png        the metric per trial over epochs
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

from cion_ray.errors import CionError
from cion_ray.io import fs
from cion_ray.pretrain.config import PretrainConfig
from cion_ray.tune.space import SearchSpec

SEARCH_FILE = "search.json"
EXPERIMENT = "search"
TRIALS = "trials"
ASHA_FILE = "asha.json"
FORMAT = "cion-ray-tune-pretrain/1"



@dataclass
class SearchPlan:
    """One search. base: the pre-training config every trial starts from (as the user gave it:
    best.yaml is written from it); spec: the space, metric, mode and trials."""
    base: PretrainConfig
    spec: SearchSpec
    out: str
    grace_period: int = 1  # epochs before ASHA may stop a trial
    reduction_factor: int = 2  # ASHA keeps the best 1/reduction_factor at each rung
    max_concurrent: int = 0  # 0: as many trials as the cluster fits at once
    base_trial: bool = True  # evaluate the base config's values as the first trial

    def fingerprint(self) -> str:
        """What a resumed search must share with the one it continues."""
        d = {"base": self.base.fingerprint(), "eval_data": self.base.eval_data,
             "space": [(x.key, x.kind, list(x.args)) for x in self.spec.space], "metric": self.spec.metric,
             "mode": self.spec.mode, "trials": self.spec.trials, "grace_period": self.grace_period,
             "reduction_factor": self.reduction_factor, "base_trial": self.base_trial}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class TrialRow:
    """One trial's outcome, from its run folder's metrics.json and Tune's record."""
    number: int  # 1-based, in Tune's order
    trial_id: str
    params: dict
    history: list[dict] = field(default_factory=list)  # metrics.json: one entry per epoch
    status: str = "not run"  # completed | stopped early | error: ... | not run
    base: bool = False  # the base config's values

    def values(self, metric: str) -> list[tuple[int, float]]:
        return [(int(m["epoch"]), float(m[metric])) for m in self.history
                if isinstance(m.get(metric), (int, float)) and math.isfinite(m[metric])]

    def best(self, metric: str, mode: str) -> tuple[int, float] | None:
        v = self.values(metric)
        if not v:
            return None
        return (max if mode == "max" else min)(v, key=lambda e: e[1])

    def last(self, metric: str) -> float | None:
        v = self.values(metric)
        return v[-1][1] if v else None

    @property
    def epochs(self) -> int:
        return max((int(m["epoch"]) for m in self.history), default=0)


@dataclass
class SearchResult:
    out: str
    metric: str
    mode: str
    rows: list[TrialRow]
    best: TrialRow
    resumed: bool
    seconds: float
    files: dict


def concurrency(cfg: PretrainConfig, gpus: float, have: dict, wanted: int = 0) -> int:
    """Trials whose worker groups fit the cluster `have` at once (at least 1 with
    scale.allow_pending), capped at `wanted` (> 0). A CionError when one trial can never fit."""
    need = {"CPU": cfg.scale.workers * cfg.scale.cpus_per_worker, "GPU": cfg.scale.workers * gpus}
    fits = [math.floor(have.get(r, 0.0) / n + 1e-9) for r, n in need.items() if n > 0]
    n = min(fits) if fits else 1
    if n < 1:
        if not cfg.scale.allow_pending:
            short = " and ".join(f"{need[r]:g} {r}s (the cluster has {have.get(r, 0):g})"
                                 for r in need if need[r] > have.get(r, 0))
            raise CionError(f"one trial's {cfg.scale.workers} worker(s) need {short}: no trial could ever start; "
                            "use fewer workers or fewer resources per worker (--set scale.cpus_per_worker=...), or "
                            "--set scale.allow_pending=true on an autoscaling cluster")
        n = 1
    return min(n, wanted) if wanted > 0 else n


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _trial_number(trial_id: str) -> int:
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) + 1 if tail.isdigit() else 0


def claim_search(plan: SearchPlan, base: PretrainConfig) -> bool:
    """Record the search in out (search.json), or check that the one there is this search.
    -> whether a search was there (resume)."""
    uri = fs.join(plan.out, SEARCH_FILE)
    fp = plan.fingerprint()
    if fs.exists(uri):
        prev = fs.read_json(uri)
        if prev.get("format") != FORMAT:
            raise CionError(f"{plan.out}: holds something other than a pre-training search ({SEARCH_FILE})")
        if prev.get("fingerprint") != fp:
            raise CionError(f"{plan.out}: holds a search with other settings (fingerprint {prev.get('fingerprint')}, "
                            f"now {fp}): run the same command to resume it, or choose another --out")
        return True
    fs.write_json(uri, {"format": FORMAT, "fingerprint": fp, "metric": plan.spec.metric, "mode": plan.spec.mode,
                        "space": {d.key: d.describe() for d in plan.spec.space}, "base": asdict(base)})
    return False


def _get(cfg, key: str):
    v = cfg
    for part in key.split("."):
        v = getattr(v, part)
    return list(v) if isinstance(v, tuple) else v


def trial_rows(records: list[dict], plan: SearchPlan, base: PretrainConfig) -> list[TrialRow]:
    """One row per trial, in Tune's order. records: {"trial_id", "params", "epoch" (the last
    epoch Tune saw), "error" (a message or None)}; each history from the trial's metrics.json."""
    rows = []
    base_params = {d.key: _get(base, d.key) for d in plan.spec.space}
    for rec in records:
        uri = fs.join(plan.out, TRIALS, rec["trial_id"], "metrics.json")
        seen = int(rec.get("epoch") or 0)
        # what Tune saw: a stopped trial's workers may finish another epoch before they are gone
        history = [m for m in (fs.read_json(uri) if fs.exists(uri) else []) if int(m["epoch"]) <= seen]
        row = TrialRow(_trial_number(rec["trial_id"]), rec["trial_id"], dict(rec["params"]), history)
        if rec.get("error"):
            row.status = f"error: {rec['error']}"[:200]
        elif seen >= base.optim.epochs:
            row.status = "completed"
        elif seen > 0:
            row.status = "stopped early"
        row.base = plan.base_trial and row.number == 1 and _same(row.params, base_params)
        rows.append(row)
    return sorted(rows, key=lambda x: x.number)


def _same(a: dict, b: dict) -> bool:
    return all(a.get(k) == v or (isinstance(v, float) and isinstance(a.get(k), float)
                                 and math.isclose(a[k], v)) for k, v in b.items())


def pick_best(rows: list[TrialRow], metric: str, mode: str) -> TrialRow:
    """The completed trial with the best last value of `metric` (trials that ran the whole length
    are compared at the same epoch); without any, the best value of any trial."""
    sign = 1.0 if mode == "max" else -1.0
    done = [r for r in rows if r.status == "completed" and r.last(metric) is not None]
    if done:
        return max(done, key=lambda r: (sign * r.last(metric), -r.number))
    ran = [r for r in rows if r.best(metric, mode) is not None]
    if not ran:
        errors = "; ".join(f"trial {r.number}: {r.status}" for r in rows[:3])
        raise CionError(f"no trial reported {metric}" + (f" ({errors})" if errors else ""))
    return max(ran, key=lambda r: (sign * r.best(metric, mode)[1], -r.number))


def write_outputs(plan: SearchPlan, rows: list[TrialRow], best: TrialRow) -> dict:
    from cion_ray.tune.space import params_yaml

    metric, mode = plan.spec.metric, plan.spec.mode
    files = {"results.csv": results_csv(rows, plan.spec.keys, metric, mode),
             "results.md": results_md(rows, plan.spec.keys, metric, mode, best),
             "curves.png": curves_png(rows, metric, best, plan.base.optim.epochs)}
    header = (f"# cion-ray tune pretrain: trial {best.number} ({best.trial_id}) of {plan.out}, "
              f"{metric} {best.last(metric) if best.status == 'completed' else best.best(metric, mode)[1]:.4f}\n"
              f"# cion-ray pretrain --config best.yaml --data DATA --out OUT\n")
    files["best.yaml"] = params_yaml(plan.base, best.params, header, drop=("data", "out", "crops")).encode()
    for name, data in files.items():
        fs.write_bytes_atomic(fs.join(plan.out, name), data if isinstance(data, bytes) else data.encode())
    return {name: fs.join(plan.out, name) for name in files}


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)


def _table(rows: list[TrialRow], keys: list[str], metric: str, mode: str) -> tuple[list[str], list[list[str]]]:
    head = ["trial", "trial_id"] + keys + [f"best_{metric}", "best_epoch", f"last_{metric}", "epochs", "status",
                                            "base"]
    body = []
    for r in rows:
        b = r.best(metric, mode)
        body.append([str(r.number), r.trial_id] + [_fmt(r.params.get(k)) for k in keys]
                    + [_fmt(b[1]) if b else "", str(b[0]) if b else "", _fmt(r.last(metric)), str(r.epochs),
                       r.status, "yes" if r.base else ""])
    return head, body


def results_csv(rows: list[TrialRow], keys: list[str], metric: str, mode: str) -> str:
    import csv
    import io

    head, body = _table(rows, keys, metric, mode)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    w.writerows(body)
    return buf.getvalue()


def results_md(rows: list[TrialRow], keys: list[str], metric: str, mode: str, best: TrialRow) -> str:
    head, body = _table(rows, keys, metric, mode)
    head = [h.split(".")[-1] for h in head]
    lines = [f"# Pre-training search: {metric} ({mode})", "",
             f"Best: trial {best.number} ({best.trial_id}), {metric} {_fmt(best.last(metric))} after "
             f"{best.epochs} epochs ({best.status}).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def curves_png(rows: list[TrialRow], metric: str, best: TrialRow, epochs: int) -> bytes:
    """The metric per trial over epochs: the best trial thick, the base config's trial dashed,
    a trial ASHA stopped ends in an x."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker below)

    fig, ax = plt.subplots(figsize=(9, 5.5), constrained_layout=True)
    for i, r in enumerate(rows):
        v = r.values(metric)
        if not v:
            continue
        label = f"trial {r.number}" + (" (base)" if r.base else "") + (" (best)" if r is best else "")
        ax.plot([e for e, _ in v], [x for _, x in v], "-" if not r.base else "--", marker="o", ms=3,
                lw=2.8 if r is best else 1.2, color=f"C{i % 10}", label=label, zorder=3 if r is best else 2)
        if r.status == "stopped early":
            ax.plot([v[-1][0]], [v[-1][1]], "x", color=f"C{i % 10}", ms=9, mew=2)
    ax.set(title=f"{metric} per trial (x: stopped early by ASHA)", xlabel="epoch", ylabel=metric,
           xlim=(0.5, epochs + 0.5))
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if len(rows) <= 20:
        ax.legend(fontsize=8, ncol=2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
