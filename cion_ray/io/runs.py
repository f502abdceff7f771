"""Stage outputs committed by manifest.

A stage writes its Parquet files under `<out>/<table>/run-<id>/`, then
publishes `<out>/_manifest.json` listing the files of every committed run (with
row counts, sizes and checksums: `cion_ray.io.stage`) and the units (videos)
they cover. Readers read only the listed files, after checking they are all
there at their committed sizes, so an interrupted run's files are never seen
and a damaged output is refused; a re-run skips committed units. The manifest
is replaced atomically (rename locally, a single PUT on S3).
"""
from __future__ import annotations

import secrets
import time

from cion_ray.errors import CionError
from cion_ray.io import fs, stage

MANIFEST = "_manifest.json"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def load_manifest(out: str, stage: str) -> dict | None:
    uri = fs.join(out, MANIFEST)
    if not fs.exists(uri):
        return None
    m = fs.read_json(uri)
    if m.get("stage") != stage:
        raise CionError(f"{out}: holds the output of stage {m.get('stage')!r}, not {stage!r}")
    return m


def empty_manifest(stage: str, fingerprint: str, config: dict) -> dict:
    return {"format": "cion-ray-manifest/2", "stage": stage, "fingerprint": fingerprint, "config": config,
            "runs": [], "units": {}}


def check_fingerprint(m: dict, fingerprint: str, out: str) -> None:
    if m["fingerprint"] != fingerprint:
        raise CionError(f"{out}: was written with a different configuration (fingerprint {m['fingerprint']}, "
                        f"now {fingerprint}); use a new output location or --overwrite")


def commit(out: str, m: dict, run: dict, units: dict[str, dict]) -> dict:
    """Add a finished run (its files, recorded with rows, size and checksum) and its units, then
    publish the manifest. Returns the manifest published."""
    m = dict(m)
    run = dict(run)
    run.setdefault("records", stage.file_records(out, [fs.join(out, f) for f in run["files"]]))
    m["runs"] = list(m["runs"]) + [run]
    m["units"] = {**m["units"], **units}
    fs.write_json(fs.join(out, MANIFEST), m)
    return m


def committed_files(out: str, stage_name: str, runs_wanted: set[str] | None = None) -> list[str]:
    """The Parquet files of every committed run (or of the runs named), as URIs, after checking
    that each is there at its committed size."""
    m = load_manifest(out, stage_name)
    if m is None:
        raise CionError(f"{out}: no committed {stage_name} output here (no {MANIFEST})")
    chosen = [r for r in m["runs"] if runs_wanted is None or r["run_id"] in runs_wanted]
    stage.check_records(out, [rec for r in chosen for rec in r.get("records", [])], f"{stage_name} output")
    return [fs.join(out, f) for r in chosen for f in r["files"]]


def check_run_folder(out: str, run_file: str, fingerprint: str, resume: bool, what: str) -> bool:
    """Whether a training run may start in `out`, writing nothing: without `resume`, no `run_file`
    there; with it, one of the same fingerprint. Otherwise a CionError naming `out`.
    Returns whether a run is there (True: resuming)."""
    uri = fs.join(out, run_file)
    if not fs.exists(uri):
        if resume:
            raise CionError(f"{out}: no {what} run to resume there")
        return False
    if not resume:
        raise CionError(f"{out}: holds a {what} run already; pass --resume to continue it, or choose another --out")
    prev = fs.read_json(uri).get("fingerprint")
    if prev != fingerprint:
        raise CionError(f"{out}: the run there has another configuration (fingerprint {prev}, now {fingerprint}); "
                        "resume it with the same settings, or choose another --out (or remove that folder) to start "
                        "afresh")
    return True


def claim_run_folder(out: str, run_file: str, fingerprint: str, config: dict, resume: bool, what: str) -> bool:
    """The start of a training run in `out`: check_run_folder, then record `run_file`
    ({"fingerprint", "config"}) when starting afresh. Claim only once every other check of the run
    has passed: a refused run must leave nothing behind, or the same command, fixed, could neither
    start afresh (a run is there) nor resume it (another fingerprint).
    Returns whether a run was there (True: resuming)."""
    if check_run_folder(out, run_file, fingerprint, resume, what):
        return True
    fs.write_json(fs.join(out, run_file), {"fingerprint": fingerprint, "config": config})
    return False
