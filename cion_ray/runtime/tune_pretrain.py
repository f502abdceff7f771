"""The Ray side of `cion-ray tune pretrain` (the plan and outputs: cion_ray/tune/pretrain.py).

Each trial is a Ray Train run: Tune runs `_trial`, which builds the same TorchTrainer as
`cion-ray pretrain` (runtime.pretrain.build_trainer) with a TuneReportCallback and calls fit();
the workers' per-epoch reports reach Tune, and ASHA (time attribute: the epoch) stops the weak
trials at its rungs. A trial's Train run is stored by its trial id (trials/<id>/train), so a
trial that Tune restores (the driver died; the same command again) resumes its Train run from
its newest checkpoint instead of starting again; trials that completed or that ASHA stopped are
not run again.

Resources: the trial function itself reserves no CPU (a 1 MiB memory bundle: Tune refuses an
empty one), its Train workers what scale.* says; concurrent trials are capped so that their
worker groups fit the cluster at once (tune.pretrain.concurrency), or one trial's group waits
on another's and a small cluster deadlocks.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, replace
from typing import Callable

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from cion_ray.errors import CionError
from cion_ray.io import fs
from cion_ray.pretrain.config import PretrainConfig
from cion_ray.tune.pretrain import (ASHA_FILE, EXPERIMENT, TRIALS, SearchPlan, SearchResult, _get, _short,
                                    _trial_number, claim_search, concurrency, pick_best, trial_rows, write_outputs)
from cion_ray.tune.space import SearchSpec, apply_params


def _trial(params: dict, base: dict, root: str, gpus: float) -> None:
    """A Tune trial: one pre-training run with the trial's params, as a Ray Train run named by the
    trial id under root/trials/ (fit() again resumes it from its newest checkpoint)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from cion_ray.config import from_dict
    from cion_ray.runtime.pretrain import build_trainer

    trial_id = tune.get_context().get_trial_id()
    cfg = apply_params(from_dict(PretrainConfig, base), params, f"trial {trial_id}")
    cfg = replace(cfg, out=fs.join(root, TRIALS, trial_id))
    build_trainer(cfg, gpus, callbacks=(TuneReportCallback(),), log_file=True).fit()


# The driver's printer of trial events. The callback object is pickled into Tune's experiment
# state and comes back on a restore, so it holds no printer itself: it prints through this.
_SINK: list[Callable[[str], None]] = [print]


def _emit(msg: str) -> None:
    _SINK[0](msg)


class TrialEvents(tune.Callback):
    """One console line per trial event: started (or resumed), each epoch's metric, stopped early,
    completed, failed."""

    def __init__(self, metric: str, epochs: int, total: int):
        self.metric, self.epochs, self.total = metric, epochs, total

    def _name(self, trial) -> str:
        return f"trial {_trial_number(trial.trial_id)}/{self.total} ({trial.trial_id})"

    def on_trial_start(self, iteration, trials, trial, **info):
        params = "  ".join(f"{k.rsplit('.', 1)[-1]} {_short(v)}" for k, v in trial.config.items())
        done = (trial.last_result or {}).get("epoch")
        what = f"resumed after epoch {done}" if done else "started"
        _emit(f"{self._name(trial)} {what}: {params}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        v = result.get(self.metric)
        shown = f"{v:.4f}" if isinstance(v, (int, float)) else "-"
        _emit(f"{self._name(trial)} epoch {result.get('epoch')}/{self.epochs}: {self.metric} {shown}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        epoch, v = r.get("epoch", 0), r.get(self.metric)
        shown = f"{self.metric} {v:.4f}" if isinstance(v, (int, float)) else "no result"
        if epoch and epoch < self.epochs:
            _emit(f"{self._name(trial)} stopped early (ASHA) at epoch {epoch}: {shown}")
        else:
            _emit(f"{self._name(trial)} completed {epoch} epochs: {shown}")

    def on_trial_error(self, iteration, trials, trial, **info):
        _emit(f"{self._name(trial)} failed at epoch {(trial.last_result or {}).get('epoch', 0)}: "
              f"{_error_line(trial)} (log: {TRIALS}/{trial.trial_id}/log.txt)")


def _error_line(trial) -> str:
    try:
        text = trial.get_pickled_error() or trial.get_error()
    except Exception:
        text = None
    if text is None:
        return "error"
    from cion_ray.runtime.session import root_message

    return root_message(text) if isinstance(text, BaseException) else str(text).strip().splitlines()[-1]


class PersistentASHA(ASHAScheduler):
    """ASHA whose rung records are saved to `state_uri` after every decision and loaded before the
    first one: Tune saves its searcher's state but not its scheduler's (this object comes back
    from the pickle made when the search started), and a resumed search would otherwise compare
    its trials' later epochs with nothing."""

    def __init__(self, state_uri: str, **kw):
        super().__init__(**kw)
        self.state_uri = state_uri
        self._loaded = False

    def _load(self) -> None:
        self._loaded = True
        if not fs.exists(self.state_uri):
            return
        for bracket, rungs in zip(self._brackets, fs.read_json(self.state_uri)):
            for (milestone, recorded), (m, values) in zip(bracket._rungs, rungs):
                if milestone == m:
                    recorded.update(values)

    def on_trial_result(self, tune_controller, trial, result):
        if not self._loaded:
            self._load()
        decision = super().on_trial_result(tune_controller, trial, result)
        state = [[(m, {k: float(v) for k, v in rec.items()}) for m, rec in b._rungs] for b in self._brackets]
        fs.write_json(self.state_uri, state)
        return decision


def prepare_base(cfg: PretrainConfig) -> PretrainConfig:
    """The trials' base: absolute paths, every input checked on the driver (runtime.pretrain's own
    checks), a checkpoint every epoch (ASHA's rungs and a resumed trial lose at most one epoch)."""
    from cion_ray.pretrain.data import absolute
    from cion_ray.runtime.pretrain import _check_inputs, prepare_pack

    cfg = replace(cfg, data=absolute(cfg.data), crops=absolute(cfg.crops), eval_data=absolute(cfg.eval_data),
                  gt=absolute(cfg.gt), init=absolute(cfg.init), checkpoint_every=1)
    cfg = _check_inputs(cfg)
    prepare_pack(cfg, log=lambda m: None)  # once for every trial (each trial's out is its own)
    return cfg


def check_trial_inputs(base: PretrainConfig, spec: SearchSpec, keys: tuple[str, ...]) -> None:
    """runtime.pretrain's input checks (e.g. every worker's shard fills its P x K batches) on the
    configs at each end of the searched `keys` that those checks depend on."""
    from cion_ray.runtime.pretrain import _check_inputs

    first = {d.key: d.ends()[0] for d in spec.space}
    for d in spec.space:
        if d.key not in keys:
            continue
        for v in d.ends():
            try:
                _check_inputs(apply_params(base, {**first, d.key: v}))
            except CionError as e:
                raise CionError(f"{spec.source}: space.{d.key}={v!r}: {e}") from None


def _start_local_ray(address: str | None) -> None:
    """Start the local Ray instance (when there is no cluster to join) with its dashboard on a
    port chosen here and named in RAY_API_SERVER_ADDRESS, which Ray's processes inherit. Ray
    Train's placement-group cleaner (Ray 2.60) finds the state API by looking for "the" Ray
    instance on the machine; with another one running (tests, a second search) it fails, and
    the worker group of every trial ASHA stops keeps its CPUs: the next trials wait forever."""
    if ray.is_initialized() or address or os.environ.get("RAY_ADDRESS"):
        return
    import logging
    import socket

    from cion_ray.progress import verbose
    from cion_ray.runtime.session import _AUTH_ON_NOTICE

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    # one machine: no preemption to watch for (its actor logs an error line per trial at start);
    # set before Ray starts: its processes inherit the driver's environment
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    if not verbose():
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_AUTH_ON_NOTICE)
    # the workers' output stays in the session's logs (rank 0's messages: trials/<id>/log.txt): on the
    # console, one line per trial event; a failed trial's error reaches the driver through Tune
    ray.init(address="local", include_dashboard=True, dashboard_port=port, log_to_driver=verbose(),
             logging_level=logging.INFO if verbose() else logging.WARNING)


def run_search(plan: SearchPlan, address: str | None = None, log: Callable[[str], None] = print) -> SearchResult:
    """Run (or resume: the same plan on the same out) the search; write its outputs."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from cion_ray.runtime.pretrain import worker_resources
    from cion_ray.runtime.session import ensure_ray, train_storage
    from cion_ray.runtime.tune_space import to_tune

    t0 = time.perf_counter()
    if fs.is_remote(plan.out):
        fs.check_output(plan.out)
    else:
        from cion_ray.pretrain.data import absolute

        plan = replace(plan, out=absolute(plan.out))
    base = prepare_base(plan.base)
    check_trial_inputs(base, plan.spec, ("optim.k_schedule", "optim.batch_per_worker", "labels", "model.arch",
                                         "seed", "init"))
    _start_local_ray(address)
    ensure_ray(address)
    gpus, _ = worker_resources(base)
    base = replace(base, scale=replace(base.scale, gpus_per_worker=gpus))
    at_once = concurrency(base, gpus, ray.cluster_resources(), plan.max_concurrent)
    resumed = claim_search(plan, base)
    epochs = base.optim.epochs

    import logging

    # the base config's values are the first trial even where they lie outside the searched range
    logging.getLogger("ray.tune.search.variant_generator").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own tables off (verbose 0): our lines instead
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # experiment state saved often: a resume loses little
    trainable = tune.with_resources(tune.with_parameters(_trial, base=asdict(base), root=plan.out, gpus=gpus),
                                    tune.PlacementGroupFactory([{"CPU": 0, "memory": 1 << 20}]))
    storage_path, storage_fs = train_storage(plan.out)
    exp_path = fs.join(plan.out, EXPERIMENT) if fs.is_remote(plan.out) else os.path.join(storage_path, EXPERIMENT)
    grid_size = math.prod(len(d.args) for d in plan.spec.space if d.kind == "grid")
    points = [{d.key: _get(base, d.key) for d in plan.spec.space}] if plan.base_trial else []
    total = len(points) + (plan.spec.trials - len(points)) * grid_size  # a point takes one sample's place
    _SINK[0] = log
    scheduler = PersistentASHA(fs.join(plan.out, ASHA_FILE), time_attr="epoch", max_t=epochs,
                               grace_period=plan.grace_period, reduction_factor=plan.reduction_factor)
    where = f"{base.scale.workers} worker(s) x {base.scale.cpus_per_worker:g} CPU" + (
        f" + {gpus:g} GPU" if gpus > 0 else "")
    if resumed and tune.Tuner.can_restore(exp_path, storage_filesystem=storage_fs):
        log(f"resuming the search in {plan.out}: unfinished trials continue from their checkpoints")
        tuner = tune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=storage_fs)
    else:
        log(f"searching {len(plan.spec.space)} hyperparameters of pre-training ({base.model.arch}, {epochs} epochs "
            f"a trial) on {base.data}: {total} trials, {plan.spec.metric} ({plan.spec.mode}), ASHA grace "
            f"{plan.grace_period} reduction {plan.reduction_factor}; {at_once} at once, {where} each -> {plan.out}")
        tuner = tune.Tuner(
            trainable, param_space=to_tune(plan.spec),
            tune_config=tune.TuneConfig(metric=plan.spec.metric, mode=plan.spec.mode, num_samples=plan.spec.trials,
                                        scheduler=scheduler,
                                        search_alg=BasicVariantGenerator(points_to_evaluate=points,
                                                                         max_concurrent=at_once)),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=storage_path, storage_filesystem=storage_fs,
                                      verbose=0, callbacks=[TrialEvents(plan.spec.metric, epochs, total)],
                                      failure_config=tune.FailureConfig(max_failures=0)))
    try:
        grid = tuner.fit()
    finally:
        _SINK[0] = print
    rows = trial_rows([_record(r) for r in grid], plan, base)
    best = pick_best(rows, plan.spec.metric, plan.spec.mode)
    files = write_outputs(plan, rows, best)
    return SearchResult(plan.out, plan.spec.metric, plan.spec.mode, rows, best, resumed,
                        time.perf_counter() - t0, files)




def _record(result) -> dict:
    """A Tune Result as tune.pretrain.trial_rows reads it."""
    import re

    from cion_ray.runtime.session import root_message

    found = re.search(r"([0-9a-f]{5}_\d{5})", os.path.basename(str(result.path)))
    metrics = result.metrics or {}
    return {"trial_id": metrics.get("trial_id") or (found.group(1) if found else str(result.path)),
            "params": dict(result.config or {}), "epoch": metrics.get("epoch", 0),
            "error": root_message(result.error) if result.error is not None else None}
