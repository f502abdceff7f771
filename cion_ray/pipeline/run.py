"""The pipeline run: track -> curate -> pretrain -> evaluate, each stage skipped when what it
would produce is already committed for the same inputs, resumed when it was interrupted.

What is committed, stage by stage:
- track and curate: their own manifests (`crops/_manifest.json`, `curated/_manifest.json`); a
  stage whose manifest already covers its inputs is skipped without starting Ray.
- pretrain: a run folder named by the content key of its inputs (the curated identities' file
  records and the pre-training settings), `pretrain/<key>/`; an interrupted run there resumes from
  its last checkpoint, a run on other data or settings gets another folder (nothing is replaced).
- evaluate: `evaluate/<key>.json`, keyed by the checkpoint's record and the evaluation settings.
`_pipeline.json` under the output records each finished stage (its key and output records); a
stage is skipped only when its key matches and its outputs still pass their records.

Rounds (`rounds` > 1): round r >= 2 runs curate, pretrain and evaluate again, the curation into
`curated-r<r>/` with round r-1's pre-training run as the embedder. Each round is skipped or
resumed like the first: its curation by its manifest (a curation made with an earlier backbone
of round r-1 is replaced: the pipeline made it, no setting of the user's is lost), its pre-training
and evaluation by their content keys. rounds.csv / .md / .png hold each round's quality; with
`fractions`, the data-percentage study runs in the last round.

`status.json` under the output says what is running now (stage, progress, ETA) and what each
stage did; the Ray job's metadata (set at submission) names the pipeline and its run id.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from cion_ray.errors import CionError
from cion_ray.io import fs, runs, stage
from cion_ray.pipeline.config import PipelineConfig, curated_out, digest, round_configs, stage_configs, to_yaml
from cion_ray.pipeline.rounds import md_text, round_row, write_rounds

PIPELINE_FILE = "_pipeline.json"
STATUS_FILE = "status.json"
CONFIG_FILE = "pipeline.yaml"
FORMAT = "cion-ray-pipeline/1"


@dataclass
class StageResult:
    name: str
    state: str  # "done" (ran now) or "skipped" (committed before, for the same inputs)
    summary: str
    outputs: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    metrics: dict = field(default_factory=dict)
    round: int = 1


@dataclass
class PipelineResult:
    out: str
    run_id: str
    stages: list[StageResult]
    seconds: float
    study: dict | None = None  # data-percentage study: rows and table/plot files
    rounds: dict | None = None  # curation rounds (rounds > 1): rows, their Markdown table and the files


def job_info() -> dict:
    """The Ray job this driver runs in (submission id and metadata), {} outside a submitted job."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        meta = json.loads(raw).get("metadata") or {}
    except ValueError:
        return {}
    return {"submission_id": meta.get("job_submission_id", ""), "metadata": meta}


class Status:
    """status.json: the pipeline's state as a person or a dashboard reads it, kept current."""

    def __init__(self, out: str, run_id: str, cfg: PipelineConfig, every: float = 5.0):
        self.uri = fs.join(out, STATUS_FILE)
        self.every = every
        self._lock = threading.Lock()
        self._last = 0.0
        self.doc = {"format": FORMAT, "name": cfg.name, "run_id": run_id, "state": "RUNNING", "stage": None,
                    "config": CONFIG_FILE, "config_digest": digest(cfg), "job": job_info(),
                    "started": _now(), "updated": _now(),
                    "stages": {status_key(s, r): {"state": "pending"} for r, s in plan(cfg)}}
        if cfg.rounds > 1:
            self.doc["rounds"] = {"total": cfg.rounds, "current": None, "done": []}
        self.write()

    def write(self) -> None:
        with self._lock:
            self.doc["updated"] = _now()
            fs.write_json(self.uri, self.doc)
            self._last = time.monotonic()

    def start(self, name: str) -> None:
        self.doc["stage"] = name
        self.doc["stages"][name] = {"state": "running", "started": _now()}
        self.write()

    def begin_round(self, rnd: int) -> None:
        if "rounds" in self.doc:
            self.doc["rounds"]["current"] = rnd
            self.write()

    def end_round(self, row: dict) -> None:
        """A finished round's summary (its rounds.csv row)."""
        done = [d for d in self.doc["rounds"]["done"] if d["round"] != row["round"]]
        self.doc["rounds"]["done"] = done + [row]
        self.write()

    def end(self, r: StageResult) -> None:
        entry = self.doc["stages"][status_key(r.name, r.round)]
        entry.update(state=r.state, finished=_now(), seconds=round(r.seconds, 1), summary=r.summary,
                     outputs=r.outputs)
        entry.pop("progress", None)
        self.write()

    def progress(self, event: dict) -> None:
        """A listener of cion_ray.progress: the running stage's counts, rate and ETA."""
        name = self.doc.get("stage")
        if name is None:
            return
        self.doc["stages"][name]["progress"] = {k: event.get(k) for k in ("stage", "done", "total", "unit",
                                                                          "rate", "eta_s")}
        if time.monotonic() - self._last >= self.every or event.get("finished"):
            try:
                self.write()
            except Exception:  # a status write must never stop the work it reports on
                pass

    def finish(self, state: str, error: str = "") -> None:
        self.doc["state"] = state
        if error:
            self.doc["error"] = error
            name = self.doc.get("stage")
            if name and self.doc["stages"][name].get("state") == "running":
                self.doc["stages"][name]["state"] = "failed"
        else:
            self.doc["stage"] = None
            if "rounds" in self.doc:
                self.doc["rounds"]["current"] = None
        self.write()


def plan(cfg: PipelineConfig) -> list[tuple[int, str]]:
    """(round, stage) in the order they run: cfg.stages, then for each further round its stages
    from curate on (the crops are tracked once)."""
    later = [s for s in cfg.stages if s != "track"]
    return [(1, s) for s in cfg.stages] + [(r, s) for r in range(2, cfg.rounds + 1) for s in later]


def status_key(name: str, rnd: int) -> str:
    """A stage's entry in status.json: its name in round 1, `<name>-r<round>` after."""
    return name if rnd == 1 else f"{name}-r{rnd}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _Ledger:
    """_pipeline.json: each finished stage's input key and output records."""

    def __init__(self, out: str):
        self.uri = fs.join(out, PIPELINE_FILE)
        self.doc = fs.read_json(self.uri) if fs.exists(self.uri) else {"format": FORMAT, "stages": {}}
        if self.doc.get("format") != FORMAT:
            raise CionError(f"{self.uri}: not a cion-ray pipeline record ({self.doc.get('format')!r})")

    def done(self, out: str, name: str, key: str) -> dict | None:
        """The recorded outputs of stage `name` for input `key`, when they are still intact."""
        rec = self.doc["stages"].get(name, {}).get(key)
        if rec is None:
            return None
        try:
            stage.check_records(out, rec["records"], f"the {name} stage's output")
        except CionError:
            return None
        return rec

    def record(self, name: str, key: str, outputs: dict, records: list[dict], metrics: dict) -> None:
        self.doc["stages"].setdefault(name, {})[key] = {"outputs": outputs, "records": records, "metrics": metrics,
                                                         "finished": _now()}
        fs.write_json(self.uri, self.doc)


@dataclass
class _Ctx:
    cfg: PipelineConfig
    out: str
    address: str | None
    overwrite: set[str]
    log: Callable[[str], None]
    ledger: _Ledger
    status: Status
    configs: dict
    round: int = 1


def run_pipeline(cfg: PipelineConfig, address: str | None = None, overwrite: tuple[str, ...] = (),
                 log: Callable[[str], None] = print) -> PipelineResult:
    """Run cfg.stages in order under cfg.out; see the module docstring for what is skipped."""
    t0 = time.perf_counter()
    out = cfg.out.rstrip("/")
    if not fs.is_remote(out):
        from pathlib import Path

        out = str(Path(out).resolve())
        cfg = replace(cfg, out=out)
    fs.check_output(out)
    bad = [s for s in overwrite if s not in ("track", "curate")]
    if bad:
        raise CionError(f"--overwrite {bad[0]}: only the track and curate outputs are replaced in place (pre-training "
                        "and evaluation outputs are keyed by their inputs and never overwritten)")
    run_id = job_info().get("submission_id") or runs.new_run_id()  # in a Ray job: its submission id
    fs.write_bytes_atomic(fs.join(out, CONFIG_FILE), to_yaml(cfg).encode())
    ctx = _Ctx(cfg, out, address, set(overwrite), log, _Ledger(out), Status(out, run_id, cfg), stage_configs(cfg))
    listener = _listen(ctx.status)
    results: list[StageResult] = []
    steps = plan(cfg)
    rows: list[dict] = []
    try:
        for rnd in range(1, cfg.rounds + 1):
            if rnd > 1:  # the previous round's pre-training run embeds this round's crops
                ctx.configs = round_configs(cfg, rnd, _round_run(results, rnd - 1))
            ctx.round = rnd
            ctx.status.begin_round(rnd)
            # a data-percentage study runs once, on the last round's curation
            fractions = (list(cfg.fractions) or [None]) if rnd == cfg.rounds else [None]
            done: list[StageResult] = []
            for name in [s for r, s in steps if r == rnd]:
                i = steps.index((rnd, name)) + 1
                where = f"round {rnd}/{cfg.rounds}, " if cfg.rounds > 1 else ""
                log(f"== {name} ({where}{i}/{len(steps)}) ==")
                ctx.status.start(status_key(name, rnd))
                s0 = time.perf_counter()
                if name in ("pretrain", "evaluate"):
                    parts = [STAGE_FUNCS[name](ctx, done, f) for f in fractions]
                    r = parts[0] if len(parts) == 1 else _combine(name, fractions, parts)
                else:
                    r = STAGE_FUNCS[name](ctx, done, None)
                r.seconds = time.perf_counter() - s0
                r.round = rnd
                done.append(r)
                ctx.status.end(r)
                log(f"   {name}: {r.state}: {r.summary}")
            results += done
            if cfg.rounds > 1:
                rows.append(_round_summary(ctx, rnd, done))
                ctx.status.end_round(rows[-1])
        study = _study(ctx, results) if cfg.fractions and "evaluate" in cfg.stages else None
        rounds = _rounds(ctx, rows) if cfg.rounds > 1 else None
    except BaseException as e:
        ctx.status.finish("FAILED", fs.redact(str(e)) or type(e).__name__)
        raise
    finally:
        _unlisten(listener)
    ctx.status.finish("SUCCEEDED")
    return PipelineResult(out, run_id, results, time.perf_counter() - t0, study, rounds)


def _listen(status: Status):
    try:
        from cion_ray import progress
    except ImportError:  # progress reporting is optional for status.json
        return None
    progress.add_listener(status.progress)
    return status.progress


def _unlisten(listener) -> None:
    if listener is not None:
        from cion_ray import progress

        progress.remove_listener(listener)


# ---- the stages ----------------------------------------------------------------------------------

def _track(ctx: _Ctx, done: list[StageResult], _fraction) -> StageResult:
    from cion_ray.runtime.track import run_track

    tcfg = ctx.configs["track"]
    out = tcfg.out
    outputs = {"crops": out, "report": f"{out}/report.txt"}
    if "track" not in ctx.overwrite and _track_current(tcfg):
        totals = _track_totals(tcfg)
        return StageResult("track", "skipped", f"all {totals['videos']} videos committed in {out}", outputs,
                           metrics=totals)
    r = run_track(tcfg, overwrite="track" in ctx.overwrite, address=ctx.address, log=ctx.log)
    skipped = f"; {len(r.skipped)} skipped (see {out}/report.txt)" if r.skipped else ""
    return StageResult("track", "done", f"{len(r.videos_done)} videos tracked ({r.frames} frames): {r.tracklets} "
                       f"tracklets, {r.crops} crops; {len(r.videos_skipped_finished)} committed before{skipped}",
                       outputs, metrics=_track_totals(tcfg))


def _track_totals(tcfg) -> dict:
    """Videos, frames, tracklets and crops committed in the tracking output (this run and before)."""
    from cion_ray.runtime.track import STAGE

    units = (runs.load_manifest(tcfg.out, STAGE) or {}).get("units", {})
    return {"videos": len(units), **{k: sum(int(u.get(k, 0)) for u in units.values())
                                     for k in ("frames", "tracklets", "crops")}}


def _track_current(tcfg) -> bool:
    """Whether every video under tcfg.videos is committed in tcfg.out, readable, unchanged and with
    intact files, under the same settings (else the stage runs; a changed video is refused here,
    as the stage would refuse it)."""
    from cion_ray.runtime.track import STAGE, plan_videos

    m = runs.load_manifest(tcfg.out, STAGE)
    if m is None or m.get("fingerprint") != tcfg.fingerprint():
        return False
    uris, sources, todo = plan_videos(tcfg, m)
    if todo or len(sources) < len(uris):
        return False
    try:
        runs.committed_files(tcfg.out, STAGE)
    except CionError:
        return False
    return True


def _curate(ctx: _Ctx, done: list[StageResult], _fraction) -> StageResult:
    from cion_ray.runtime.curate import run_curate

    ccfg = ctx.configs["curate"]
    overwrite = "curate" in ctx.overwrite
    if not overwrite and ctx.round > 1 and _made_with_another_embedder(ccfg):
        ctx.log(f"   {ccfg.out} was curated with another backbone of round {ctx.round - 1} (trained again, or with "
                f"other settings): curating again with {ccfg.embed.embedder}")
        overwrite = True
    r = run_curate(ccfg, overwrite=overwrite, address=ctx.address, log=ctx.log)
    outputs = {"curated": ccfg.out, "report": f"{ccfg.out}/report.txt"}
    outputs.update({f"export{i}": e for i, e in enumerate(r.exports)})
    summary = f"{r.identities} identities, {r.samples} images from {r.report['videos']} videos"
    return StageResult("curate", "skipped" if r.current else "done",
                       summary + (" (committed before, inputs unchanged)" if r.current else ""), outputs,
                       metrics={"identities": r.identities, "images": r.samples, "embedder": ccfg.embed.embedder,
                                "levels": r.report.get("levels", {}),
                                "thresholds": (r.report.get("calibration") or {}).get("thresholds", {}),
                                "ground_truth": bool(r.report.get("ground_truth"))})


def _made_with_another_embedder(ccfg) -> bool:
    """Whether a later round's curation folder (or its embedding cache) was written with other
    settings than ccfg's: in a round >= 2 that means another backbone of the round before (the
    run was trained again, or its settings changed), so what is there is replaced, not refused."""
    from cion_ray.runtime.curate import EMBED_STAGE, STAGE as CURATE

    committed = runs.load_manifest(ccfg.out, CURATE)
    embedded = runs.load_manifest(fs.join(ccfg.out, "embeddings"), EMBED_STAGE)
    return (committed is not None and committed["fingerprint"] != ccfg.fingerprint()) or \
        (embedded is not None and embedded["fingerprint"] != ccfg.embed_fingerprint())


def _pretrain_key(ctx: _Ctx, pcfg) -> str:
    """The content key of a pre-training run: its data's committed records and its settings."""
    from cion_ray.runtime.curate import STAGE as CURATE

    m = runs.load_manifest(pcfg.data, CURATE) if fs.exists(fs.join(pcfg.data, runs.MANIFEST)) else None
    if m is not None and m.get("identities"):
        data_key = stage.content_key(m["identities"].get("records") or m["identities"].get("files"))
    else:  # a CION-AL JSON or another input given in the pretrain section: its file's identity
        data_key = stage.content_key(stage.source_identity(pcfg.data))
    return stage.content_key(data_key, pcfg.fingerprint())[:12]


def _pretrain(ctx: _Ctx, done: list[StageResult], fraction) -> StageResult:
    from cion_ray.runtime.pretrain import RUN_FILE, run_pretrain

    pcfg = ctx.configs["pretrain"]
    if fraction is not None:
        pcfg = replace(pcfg, data_fraction=fraction)
    key = _pretrain_key(ctx, pcfg)
    run = f"{ctx.out}/pretrain/{_fraction_prefix(fraction)}{key}"
    pcfg = replace(pcfg, out=run)
    rec = ctx.ledger.done(ctx.out, "pretrain", key)
    if rec is not None:
        return StageResult("pretrain", "skipped", f"finished before in {run}", rec["outputs"], metrics=rec["metrics"])
    resume = fs.exists(fs.join(run, RUN_FILE))
    if resume:
        ctx.log(f"   resuming the interrupted pre-training run in {run}")
    r = run_pretrain(pcfg, address=ctx.address, resume=resume, log=ctx.log)
    outputs = {"run": run, **{name: uri for name, uri in r.exports.items()}}
    metrics = {k: v for k, v in r.metrics.items() if isinstance(v, (int, float, str))}
    if fraction is not None:
        metrics["fraction"] = fraction
    records = stage.file_records(ctx.out, list(r.exports.values()))
    ctx.ledger.record("pretrain", key, outputs, records, metrics)
    loss = r.metrics.get("loss")
    return StageResult("pretrain", "done", f"{r.metrics.get('epoch')} epochs"
                       + (f", loss {loss:.4f}" if isinstance(loss, float) else "") + f" -> {run}", outputs,
                       metrics=metrics)


def _fraction_prefix(fraction) -> str:
    return "" if fraction is None else f"f{fraction:g}-"


def _evaluate(ctx: _Ctx, done: list[StageResult], fraction) -> StageResult:
    from cion_ray.runtime.evaluate import run_evaluate

    ecfg = ctx.configs["evaluate"]
    weights, what = (ecfg.weights, ecfg.weights) if ecfg.weights else _trained_weights(done, fraction)
    key = stage.content_key(_weights_identity(what), json.dumps(asdict(replace(ecfg, weights="", out="")),
                                                                  sort_keys=True, default=list))[:12]
    uri = f"{ctx.out}/evaluate/{_fraction_prefix(fraction)}{key}.json"
    rec = ctx.ledger.done(ctx.out, "evaluate", key)
    if rec is not None:
        return StageResult("evaluate", "skipped", _eval_summary(rec["metrics"]) + " (evaluated before)",
                           rec["outputs"], metrics=rec["metrics"])
    result = run_evaluate(replace(ecfg, weights=weights, out=uri), address=ctx.address, log=ctx.log)
    metrics = {k: result["metrics"][k] for k in ("mAP", "rank1", "mINP") if k in result.get("metrics", {})}
    if fraction is not None:
        metrics["fraction"] = fraction
    outputs = {"result": uri, "weights": weights}
    ctx.ledger.record("evaluate", key, outputs, stage.file_records(ctx.out, [uri]), metrics)
    return StageResult("evaluate", "done", _eval_summary(metrics), outputs, metrics=metrics)


def _trained_weights(done: list[StageResult], fraction) -> tuple[str, str]:
    """(what to evaluate, the file that identifies it): the pretrain stage's run folder (its final
    checkpoint records the backbone and the size it was trained at) and its exported backbone.pth,
    for `fraction` in a study. done: this round's stages."""
    pre = next(r for r in done if r.name == "pretrain")
    per = pre.metrics.get("runs")
    backbone = per[f"{fraction:g}"] if per else pre.outputs["backbone.pth"]
    return backbone.rsplit("/export/", 1)[0], backbone


def _weights_identity(weights: str) -> object:
    """What the checkpoint is (content, not the time it was written); a name where it is not a file."""
    try:
        ident = stage.source_identity(weights)
    except CionError:
        return weights  # a folder (a run) or "random"
    return {k: v for k, v in ident.items() if k != "mtime"}


def _eval_summary(m: dict) -> str:
    if "mAP" not in m:
        return "evaluated"
    return f"mAP {m['mAP']:.3f}, rank-1 {m.get('rank1', float('nan')):.3f}, mINP {m.get('mINP', float('nan')):.3f}"


def _combine(name: str, fractions: list[float], parts: list[StageResult]) -> StageResult:
    """One stage result for a study's runs (one per fraction; a run skipped as done may have been
    recorded outside a study)."""
    for f, p in zip(fractions, parts):
        p.metrics = {**p.metrics, "fraction": f}
    state = "skipped" if all(p.state == "skipped" for p in parts) else "done"
    outputs = {f"{p.metrics.get('fraction'):g}": p.outputs.get("backbone.pth") or p.outputs.get("result", "")
               for p in parts}
    metrics = {"runs": outputs, "per_fraction": [p.metrics for p in parts]}
    summary = "; ".join(f"{p.metrics.get('fraction'):g}: {p.summary}" for p in parts)
    return StageResult(name, state, summary, outputs, metrics=metrics)


def _round_run(results: list[StageResult], rnd: int) -> str:
    """The pre-training run folder of round `rnd` (it pre-trained once, on all its data)."""
    return next(r for r in results if r.name == "pretrain" and r.round == rnd).outputs["run"]


def _round_summary(ctx: _Ctx, rnd: int, done: list[StageResult]) -> dict:
    by = {r.name: r for r in done}
    cur, pre, ev = by["curate"], by.get("pretrain"), by.get("evaluate")
    run = ""
    if pre is not None:  # a study's round: its run on the most data
        backbone = max(pre.outputs.items(), key=lambda kv: float(kv[0]))[1] if pre.metrics.get("runs") else ""
        run = pre.outputs.get("run") or backbone.rsplit("/export/", 1)[0]
    return round_row(rnd, cur.metrics.get("embedder", ""), cur.outputs.get("curated", curated_out(ctx.out, rnd)),
                     cur.metrics, ev.metrics if ev else None, run)


def _rounds(ctx: _Ctx, rows: list[dict]) -> dict:
    """rounds.csv / .md / .png: each round's curation quality and held-out retrieval."""
    title = f"{ctx.cfg.name}: {len(rows)} curation rounds ({ctx.cfg.pretrain.model.arch})"
    files = write_rounds(ctx.out, rows, title)
    md = md_text(rows)
    ctx.log(md.rstrip())
    return {"rows": rows, "md": md, "files": files}


def _study(ctx: _Ctx, results: list[StageResult]) -> dict:
    """The data-percentage study's table (CSV, Markdown) and plot (mAP and rank-1 against the
    percentage of identities), from the evaluate stage's per-fraction results (the last round's);
    the table and plot are cion_ray.scaling.report's, as `cion-ray scale` writes them."""
    from cion_ray.scaling.report import table_markdown, write_study

    ev = [r for r in results if r.name == "evaluate"][-1]
    rows = sorted(({"fraction": m["fraction"], "mAP": m.get("mAP"), "rank1": m.get("rank1"), "mINP": m.get("mINP")}
                   for m in ev.metrics.get("per_fraction", [ev.metrics])), key=lambda r: r["fraction"])
    arch = ctx.cfg.pretrain.model.arch
    files = write_study(ctx.out, rows, "study", f"{arch}: held-out retrieval against data", label=arch)
    ctx.log(table_markdown(rows).rstrip())
    return {"rows": rows, "files": files}


def _study_png(rows: list[dict], cfg: PipelineConfig) -> bytes:
    from cion_ray.scaling.report import study_png

    arch = cfg.pretrain.model.arch
    return study_png(rows, f"{arch}: held-out retrieval against data", label=arch)


STAGE_FUNCS = {"track": _track, "curate": _curate, "pretrain": _pretrain, "evaluate": _evaluate}
