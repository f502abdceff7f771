"""Training images and their identities, from any of three sources:

- a curated output (curate stage: identities Parquet, images from the crops Parquet it curated);
- a tracking output (track stage), with labels="tracklet": every tracklet its own identity,
  the tracklet-level baseline;
- a CION-AL JSON ([{"file_path", "id"}], paths relative to the JSON's folder), the released format;
  every path must stay inside that folder and every id be a non-negative integer, one per file
  (checked on the driver, before any worker starts: see cion_al_entries).

`labels="tracklet"` on a curated output uses its (video, tracklet) pairs as identities instead;
`labels="instance"` makes every image its own identity (the instance-level DINO baseline).
`labels="gt"` (with `gt`: a synthetic world or a MOT folder) labels the crops of a curated or a
tracking output with the ground-truth person each one shows, the upper bound (see gt_labels).
A seeded fraction of the identities is kept (the same subset for the same seed, and a smaller
fraction is a subset of a larger one); each worker then loads only the images of its own shard.
With a validation fraction, its identities are held out first (pretrain/validation.py) and the
data fraction is taken among the rest (see split_identities).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from cion_ray.curation.gt import crop_identities, gt_layout, load_gt
from cion_ray.errors import CionError
from cion_ray.io import fs, runs, stage
from cion_ray.io.crops import read_crop_images
from cion_ray.pretrain.validation import holdout_identities


@dataclass
class LabelTable:
    """keys: (N,) crop ids or image URIs; identity: (N,) int64 identity per image."""

    kind: str  # "parquet" or "files"
    keys: np.ndarray
    identity: np.ndarray
    crop_files: list[str] = field(default_factory=list)  # kind == "parquet": where the JPEG bytes are
    source: str = ""
    crops: str = ""  # the tracking output the crop files belong to
    dropped: int = 0  # crops of the source left out (labels="gt": those matching no ground-truth box)

    @property
    def n_identities(self) -> int:
        return int(len(np.unique(self.identity)))

    def subset(self, mask: np.ndarray) -> "LabelTable":
        return LabelTable(self.kind, self.keys[mask], self.identity[mask], self.crop_files, self.source, self.crops,
                          self.dropped)


def _read_parquet(files: list[str], columns: list[str], filt=None):
    import pyarrow.dataset as ds

    if not files:
        return None
    filesystem, _ = fs.arrow_fs(files[0])
    paths = [fs.arrow_fs(f)[1] for f in files]
    return ds.dataset(paths, format="parquet", filesystem=filesystem).to_table(columns=columns, filter=filt)


def _tracklet_identities(t) -> np.ndarray:
    """(video_id, track_id) columns -> a dense identity per row: each tracklet its own identity."""
    key = np.char.add(np.asarray(t.column("video_id").to_pylist(), dtype=str),
                      "/" + np.asarray(t.column("track_id"), dtype=np.int64).astype(str))
    _, inv = np.unique(key, return_inverse=True)
    return inv.astype(np.int64)


def absolute(uri: str) -> str:
    """A local path made absolute (workers of a cluster run elsewhere); URIs unchanged."""
    if not uri or fs.is_remote(uri):
        return uri
    import os

    return os.path.abspath(uri)


def load_labels(data: str, labels: str = "identity", crops: str = "", gt: str = "") -> LabelTable:
    """Read the (image, identity) table of a data source (see the module doc). `labels`: identity,
    tracklet, gt or instance (every image its own identity: the instance-level baseline, on the
    same images as labels=identity, or on every tracked crop of a tracking output); `crops`: the
    tracking output of a curated one (default: as curate recorded it); `gt`: with labels="gt", the
    synthetic world or MOT folder whose <video>/gt.txt labels the crops."""
    if labels == "instance":
        m = fs.join(data, runs.MANIFEST) if data and not data.endswith(".json") else ""
        tracked = bool(m) and fs.exists(m) and fs.read_json(m).get("stage") == "track"
        table = canonical(_load_labels(data, "tracklet" if tracked else "identity", crops, gt))
        return replace(table, identity=np.arange(len(table.keys), dtype=np.int64),
                       source=f"single instances of {table.source}")
    return canonical(_load_labels(data, labels, crops, gt))


def canonical(table: LabelTable) -> LabelTable:
    """Rows sorted by image key, identities renumbered 0.. in that order: a function of what the
    data holds, not of the order its files were written in or of the numbers its identities
    carry (a re-run of curation may write the same identities in another order, under other
    numbers). The sampler, the data fraction and the shards follow from it, so the same data and
    seed train the same run."""
    order = np.asarray(sorted(range(len(table.keys)), key=table.keys.__getitem__), dtype=np.int64)
    keys = table.keys[order]
    _, first, inverse = np.unique(table.identity[order], return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return replace(table, keys=keys, identity=rank[inverse.reshape(-1)])


def _load_labels(data: str, labels: str, crops: str, gt: str) -> LabelTable:
    if not data:
        raise CionError("pre-training needs --data: a curated output, a tracking output or a CION-AL JSON")
    if labels == "gt" and not gt:
        raise CionError(f"{data}: labels=gt needs gt, the synthetic world or MOT folder of its videos")
    if data.endswith(".json"):
        return _from_json(data, labels)
    if not fs.exists(data):
        raise CionError(f"training data {data}: not found")
    manifest = fs.join(data, runs.MANIFEST)
    m = fs.read_json(manifest) if fs.exists(manifest) else None
    if m is not None and m.get("stage") == "curate":
        if "identities" not in m:
            raise CionError(f"{data}: the curation there has not committed identities yet")
        stage.check_records(data, m["identities"].get("records", []), "curation output")
        files = [fs.join(data, f) for f in m["identities"]["files"]]
        t = _read_parquet(files, ["crop_id", "identity", "video_id", "track_id"])
        crops = crops or m.get("config", {}).get("crops", "")
        if not crops or not fs.exists(fs.join(crops, runs.MANIFEST)):
            raise CionError(f"{data}: its crops ({crops or 'unknown'}) are not reachable from here; "
                            "pass the tracking output with --set crops=URI")
        keys = np.asarray(t.column("crop_id").to_pylist(), dtype=object)
        if labels == "gt":
            return gt_labels(f"curated {data}", gt, runs.committed_files(crops, "track"), crops, keys)
        if labels == "tracklet":
            ident = _tracklet_identities(t)
        else:
            ident = np.asarray(t.column("identity"), dtype=np.int64)
        return LabelTable("parquet", keys, ident, runs.committed_files(crops, "track"), f"curated {data}", crops)
    if fs.exists(fs.join(data, "cion_al.json")):
        return _from_json(fs.join(data, "cion_al.json"), labels)
    if m is not None and m.get("stage") == "track":
        if labels not in ("tracklet", "gt"):
            raise CionError(f"{data}: is a tracking output, which has tracklets, not identities; "
                            "curate it first, or train the tracklet-level baseline with --labels tracklet")
        files = runs.committed_files(data, "track")
        if labels == "gt":
            return gt_labels(f"tracking output {data}", gt, files, data)
        t = _read_parquet(files, ["crop_id", "video_id", "track_id"])
        if t is None or t.num_rows == 0:
            raise CionError(f"{data}: the tracking output holds no crops")
        keys = np.asarray(t.column("crop_id").to_pylist(), dtype=object)
        ident = _tracklet_identities(t)
        return LabelTable("parquet", keys, ident, files, f"tracklets of {data}", data)
    raise CionError(f"training data {data}: neither a curated output, a tracking output nor a CION-AL JSON")


def _from_json(uri: str, labels: str) -> LabelTable:
    if labels != "identity":
        raise CionError(f"{uri}: a CION-AL JSON carries identities only (no tracklets, no boxes to match with "
                        "ground truth); use --labels identity")
    if not fs.exists(uri):
        raise CionError(f"training data {uri}: not found")
    keys, ident = cion_al_entries(uri, fs.read_json(uri))
    return LabelTable("files", np.asarray(keys, dtype=object), ident, source=f"CION-AL {uri}")


MAX_ID = 2 ** 63 - 1  # identities are int64


def _brief(x) -> str:
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


def cion_al_entries(uri: str, entries) -> tuple[list[str], np.ndarray]:
    """The entries of the CION-AL JSON at `uri` (parsed), checked -> (image URIs under the JSON's
    folder, (N,) int64 identities). `entries` must be a non-empty list of {"file_path", "id"}:
    file_path relative to the JSON's folder and staying inside it (no absolute path, no URI, no
    '..' out of it: a JSON is data, and must not make a worker read /etc/passwd or another bucket);
    id a non-negative integer (not a bool, a string or a float); one id per file. Anything else is
    a one-line CionError naming `uri`, the entry and the problem."""
    from cion_ray.evaluate.datasets import inside_path

    if not isinstance(entries, list):
        raise CionError(f"{uri}: not a CION-AL JSON: expected a list of {{\"file_path\", \"id\"}}, "
                        f"got {type(entries).__name__}")
    if not entries:
        raise CionError(f"{uri}: the CION-AL JSON lists no images")
    paths: list[str] = []
    ids: list[int] = []
    first: dict[str, int] = {}  # path -> the entry that named it first
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "file_path" not in e or "id" not in e:
            raise CionError(f"{uri}: not a CION-AL JSON: entry {i} is not a {{\"file_path\", \"id\"}} object: "
                           f"{_brief(e)}")
        path, pid = e["file_path"], e["id"]
        rel = inside_path(path) if isinstance(path, str) else None
        if rel is None:
            raise CionError(f"{uri}: entry {i}: file_path {_brief(path)} is not a path inside the JSON's folder "
                            "(relative, without '..' out of it)")
        if type(pid) is not int or not 0 <= pid <= MAX_ID:  # type(): True is an int to isinstance
            raise CionError(f"{uri}: entry {i}: id {_brief(pid)} is not a non-negative integer")
        j = first.setdefault(rel, i)
        if j != i and ids[j] != pid:
            raise CionError(f"{uri}: entry {i}: {rel} has id {pid}, but entry {j} gave it id {ids[j]}")
        paths.append(rel)
        ids.append(pid)
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    return [fs.join(base, p) for p in paths], np.asarray(ids, dtype=np.int64)


BOX = ["x1", "y1", "x2", "y2"]


def gt_labels(source: str, gt: str, crop_files: list[str], crops: str, keep: np.ndarray | None = None) -> LabelTable:
    """Crops labelled with the ground-truth person they show (labels="gt"), matched as the curation
    report matches them (cion_ray.curation.gt: per frame, one-to-one by IoU >= 0.5 against
    <video>/gt.txt under `gt`; the global identity from the world's identities.json when there is
    one, else the (video, gt track) pair).

    The matching runs over every crop of the tracking output (`crop_files`, frames 1-based, boxes
    x1, y1, x2, y2 in frame pixels), as the curation report's does (it leaves out only crops whose
    JPEG did not decode), so a crop is given the same person in both, whatever the curation kept.

    `keep`: (N,) crop ids, a curated output's kept crops in its row order: the rows of
    labels="identity", so the two differ only in the labels. `keep=None` (a tracking output): every
    tracked crop, with no denoising at all. Crops that match no gt box (false detections) are
    dropped and counted in `dropped` and in `source`.

    -> LabelTable; identity: (n,) int64, dense 0..n_identities-1 in the order of the gt labels.
    A missing gt folder, or a video without gt.txt, is a CionError naming the folder."""
    if not fs.exists(gt):
        raise CionError(f"gt {gt}: not found (labels=gt needs the synthetic world or MOT folder of {source})")
    folder, mapping = gt_layout(gt)
    t = _read_parquet(crop_files, ["crop_id", "video_id", "frame", *BOX])
    if t is None or t.num_rows == 0:
        raise CionError(f"{source}: its tracking output {crops} holds no crops")
    ids = np.asarray(t.column("crop_id").to_pylist(), dtype=object)
    vids = np.asarray(t.column("video_id").to_pylist(), dtype=object)
    frames = t.column("frame").to_numpy()
    boxes = np.stack([t.column(c).to_numpy() for c in BOX], axis=1).astype(np.float64)
    label = np.full(len(ids), None, dtype=object)  # None: the crop matches no gt box
    order = np.argsort(vids, kind="stable")
    missing = []
    for rows in np.split(order, np.flatnonzero(vids[order][1:] != vids[order][:-1]) + 1):
        v = str(vids[rows[0]])
        g = load_gt(gt, v)
        if g is None:
            missing.append(v)
            continue
        lab = crop_identities(v, frames[rows], boxes[rows], g, mapping)
        # crop_identities gives an unmatched crop i the label "<video>/fp<i>", a label of its own
        unmatched = lab == np.asarray([f"{v}/fp{i}" for i in range(len(rows))], dtype=object)
        label[rows] = np.where(unmatched, None, lab)
    if missing:
        raise CionError(f"gt {folder}: no gt.txt for {len(missing)} videos of {source} "
                        f"({', '.join(sorted(missing)[:3])}{' ...' if len(missing) > 3 else ''}); "
                        f"expected {fs.join(folder, '<video>', 'gt.txt')}")
    if keep is not None:
        pos = {k: i for i, k in enumerate(ids.tolist())}
        idx = np.asarray([pos.get(k, -1) for k in keep], dtype=np.int64)
        if (idx < 0).any():
            lost = [str(k) for k in np.asarray(keep)[idx < 0][:3]]
            raise CionError(f"{source}: {int((idx < 0).sum())} curated crops are missing from the crops Parquet "
                            f"of {crops} ({', '.join(lost)}{' ...' if (idx < 0).sum() > 3 else ''})")
        ids, label = ids[idx], label[idx]
    matched = np.asarray([x is not None for x in label], dtype=bool)
    dropped = int((~matched).sum())
    if not matched.any():
        raise CionError(f"gt {gt}: no crop of {source} matches a ground-truth box; "
                        "are these the videos of that world / MOT folder?")
    _, ident = np.unique(label[matched].astype(str), return_inverse=True)
    what = "kept" if keep is not None else "tracked"
    return LabelTable("parquet", ids[matched], ident.astype(np.int64), crop_files,
                      f"ground truth {gt} on the {what} crops of {source} ({dropped} matching no gt box dropped)",
                      crops, dropped)


def select_identities(identity: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The identity ids kept for a data fraction: a seeded prefix of a permutation, so a smaller
    fraction (same seed) is a subset of a larger one."""
    ids = np.unique(identity)
    n = max(1, math.ceil(fraction * len(ids) - 1e-9))
    perm = np.random.default_rng([seed, 11]).permutation(len(ids))
    return np.sort(ids[perm[:n]])


def split_identities(identity: np.ndarray, fraction: float, validation: float, seed: int,
                     source: str = "the data") -> tuple[np.ndarray, np.ndarray]:
    """-> (training identity ids, held-out validation identity ids), disjoint and sorted. The
    validation identities are held out first (the same ones for every data fraction), then the
    data fraction is selected among the rest, so fractions still nest; validation 0 holds out
    nothing and trains on exactly select_identities(identity, fraction, seed)."""
    held = holdout_identities(identity, validation, seed, source)
    rest = identity[~np.isin(identity, held)] if len(held) else identity
    return select_identities(rest, fraction, seed), held


def fetch_images(table: LabelTable) -> list[bytes]:
    """The encoded image of every row of `table`, in row order."""
    if len(table.keys) == 0:
        return []
    if table.kind == "files":
        return [fs.read_bytes(k) for k in table.keys]  # a missing or unreadable file: CionError naming it
    found = read_crop_images(table.crop_files, table.keys)
    missing = [k for k in table.keys if k not in found]
    if missing:
        raise CionError(f"{len(missing)} curated crops are missing from the crops Parquet "
                        f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})")
    return [found[k] for k in table.keys]
