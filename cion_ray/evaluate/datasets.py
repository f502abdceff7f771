"""ReID datasets in their published layouts: train / query / gallery as (files, pids, cams).

| name        | layout under the root                                       | file names                  |
|-------------|-------------------------------------------------------------|-----------------------------|
| market1501  | bounding_box_train/, query/, bounding_box_test/             | 0002_c1s1_000451_03.jpg     |
| dukemtmc    | the same folders                                            | 0001_c2_f0046182.jpg        |
| cuhk03np    | detected/ and labeled/, each with the Market folders        | 0001_c1_1.png               |
| msmt17      | train/ + test/ (V1) or mask_train_v2/ + mask_test_v2/ (V2), | list lines: `0000/0000_000_ |
|             | list_train.txt, list_val.txt, list_query.txt, list_gallery  | 01_0303morning_0015_0.jpg 0`|
| synthetic   | our world's reid/ (Market names); the world folder works too| 0002_c1s1_000451_03.jpg     |

Market convention, for every folder layout: identity -1 (junk) is dropped everywhere; identity 0
(distractors) stays in the gallery as a negative and is dropped from train and query. MSMT17's
camera is the third underscore field of the image name (`01` above); its train split is
list_train.txt (`msmt17_train="train+val"` adds list_val.txt). Paths are local or s3://.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from cion_ray.errors import CionError
from cion_ray.io import fs
from cion_ray.io.market import MARKET_RE

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MARKET_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")


@dataclass
class ImageSet:
    """One split: files (URIs), pids (N,) int64 identities, cams (N,) int64 camera numbers."""
    files: list[str]
    pids: np.ndarray
    cams: np.ndarray

    def __len__(self) -> int:
        return len(self.files)

    @property
    def identities(self) -> int:
        """Distinct identities, distractors (0) not counted."""
        return len(np.unique(self.pids[self.pids != 0]))


@dataclass
class ReIDDataset:
    name: str
    root: str  # the folder the splits were read from
    query: ImageSet
    gallery: ImageSet
    train: ImageSet | None = None

    def summary(self) -> dict:
        d = {"dataset": self.name, "root": self.root}
        for split in ("train", "query", "gallery"):
            s = getattr(self, split)
            if s is not None:
                d[split] = {"images": len(s), "identities": s.identities, "cameras": len(np.unique(s.cams))}
        return d


@dataclass(frozen=True)
class NameStyle:
    """A file-name convention: the regex gives (pid, camera) as its first two groups."""
    label: str
    pattern: re.Pattern


MARKET = NameStyle("Market-style PPPP_cCsS_FFFFFF_NN.jpg", MARKET_RE)
DUKE = NameStyle("DukeMTMC-reID-style PPPP_cC_fFFFFFFF.jpg", re.compile(r"^(-1|\d{4})_c(\d)_f\d+\.jpg$"))
CUHK03NP = NameStyle("CUHK03-NP-style PPPP_cC_N.png", re.compile(r"^(-1|\d{4})_c(\d)_\d+\.(?:png|jpg)$"))


def inside_path(path: str) -> str | None:
    """`path`, a name read from a data file (a CION-AL JSON, an MSMT17 list), as a normalised path
    relative to the folder it names files in; None where it is not one that stays inside it: an
    absolute path, a URI (s3://, file://), a '..' out of the folder, the folder itself, empty, or
    holding a NUL. Lexical only: a symbolic link inside the folder is the folder owner's choice."""
    if not path or "\x00" in path or "://" in path or path.startswith("/"):
        return None
    rel = posixpath.normpath(path)
    if rel in (".", "..") or rel.startswith("../"):
        return None
    return rel


def read_folder(folder: str, style: NameStyle, keep_distractors: bool) -> ImageSet:
    """The images of one folder with the identity and camera in their names; junk (-1) dropped,
    distractors (0) kept only if asked. Names that do not follow `style` are an error naming
    the first few."""
    kept, pids, cams, bad = [], [], [], []
    for f in fs.list_files(folder, IMAGE_SUFFIXES):
        m = style.pattern.match(posixpath.basename(f))
        if m is None:
            bad.append(posixpath.basename(f))
            continue
        pid = int(m.group(1))
        if pid < 0 or (pid == 0 and not keep_distractors):
            continue
        kept.append(f)
        pids.append(pid)
        cams.append(int(m.group(2)))
    if bad:
        raise CionError(f"{folder}: {len(bad)} file names are not {style.label} (e.g. {', '.join(bad[:3])})")
    if not kept:
        raise CionError(f"{folder}: no images")
    return ImageSet(kept, np.asarray(pids, np.int64), np.asarray(cams, np.int64))


def _market_family(name: str, style: NameStyle, root: str, with_train: bool) -> ReIDDataset:
    for sub in ("query", "bounding_box_test"):
        if not fs.exists(fs.join(root, sub)):
            raise CionError(f"{root}: no {sub}/ folder (expected a {name} split: "
                            f"{', '.join(f + '/' for f in MARKET_FOLDERS)})")
    query = read_folder(fs.join(root, "query"), style, False)
    gallery = read_folder(fs.join(root, "bounding_box_test"), style, True)
    train_dir = fs.join(root, "bounding_box_train")
    train = read_folder(train_dir, style, False) if with_train and fs.exists(train_dir) else None
    return ReIDDataset(name, root, query, gallery, train)


def load_market1501(root: str, with_train: bool = True, **_) -> ReIDDataset:
    return _market_family("market1501", MARKET, root, with_train)


def load_dukemtmc(root: str, with_train: bool = True, **_) -> ReIDDataset:
    return _market_family("dukemtmc", DUKE, root, with_train)


def load_cuhk03np(root: str, with_train: bool = True, cuhk03_protocol: str = "detected", **_) -> ReIDDataset:
    """CUHK03-NP (Zhong et al. 2017's new protocol: 767 train / 700 test identities), the
    `detected` or `labeled` boxes; `root` is the cuhk03-np folder or one of its two sub-folders."""
    if cuhk03_protocol not in ("detected", "labeled"):
        raise CionError(f"CUHK03-NP protocol {cuhk03_protocol!r}: use detected or labeled")
    sub = fs.join(root, cuhk03_protocol)
    if fs.exists(sub):
        root = sub
    elif not fs.exists(fs.join(root, "query")):
        raise CionError(f"{root}: no {cuhk03_protocol}/ folder (expected CUHK03-NP: detected/ and labeled/, "
                        "each with bounding_box_train/, query/, bounding_box_test/)")
    return _market_family("cuhk03np", CUHK03NP, root, with_train)


MSMT17_VERSIONS = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}


MSMT17_PID = re.compile(r"^(?:-1|\d+)$")  # -1: junk, as in the Market convention


def read_list(list_file: str, image_dir: str) -> ImageSet:
    """An MSMT17 list file: lines `<relative path> <pid>`, camera = third `_` field of the name.
    The path must stay inside `image_dir` and the pid be a decimal integer: a line naming
    ../../etc/passwd, or pid 5.0, is an error naming the list file and the line."""
    files, pids, cams = [], [], []
    for n, line in enumerate(fs.read_text(list_file).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2 or not MSMT17_PID.match(parts[1]):
                raise ValueError
            rel, pid = parts[0], int(parts[1])
            cam = int(posixpath.basename(rel).split("_")[2])
        except (ValueError, IndexError):
            raise CionError(f"{list_file}: line {n} is not `<id>/<id>_<n>_<camera>_<...>.jpg <id>`: "
                            f"{line.strip()[:80]!r}") from None
        inside = inside_path(rel)
        if inside is None:
            raise CionError(f"{list_file}: line {n}: {rel[:80]!r} is not a path inside {image_dir}")
        if pid < 0:
            continue
        files.append(fs.join(image_dir, *inside.split("/")))
        pids.append(pid)
        cams.append(cam)
    if not files:
        raise CionError(f"{list_file}: no images listed")
    return ImageSet(files, np.asarray(pids, np.int64), np.asarray(cams, np.int64))


def load_msmt17(root: str, with_train: bool = True, msmt17_train: str = "train", **_) -> ReIDDataset:
    """MSMT17 V1 or V2 (told apart by their image folders); `root` holds the list files."""
    if msmt17_train not in ("train", "train+val"):
        raise CionError(f"MSMT17 train split {msmt17_train!r}: use train or train+val")
    found = [v for v, (_, test) in MSMT17_VERSIONS.items() if fs.exists(fs.join(root, test))]
    if not found:
        raise CionError(f"{root}: no test/ or mask_test_v2/ folder (expected MSMT17 V1 or V2 with list_*.txt)")
    train_dir, test_dir = (fs.join(root, d) for d in MSMT17_VERSIONS[found[0]])
    lists = {k: fs.join(root, f"list_{k}.txt") for k in ("train", "val", "query", "gallery")}
    for k in ("query", "gallery"):
        if not fs.exists(lists[k]):
            raise CionError(f"{root}: no list_{k}.txt (expected MSMT17 with list_*.txt beside its image folders)")
    train = None
    if with_train and fs.exists(lists["train"]):
        parts = [read_list(lists["train"], train_dir)]
        if msmt17_train == "train+val" and fs.exists(lists["val"]):
            parts.append(read_list(lists["val"], train_dir))
        train = ImageSet([f for p in parts for f in p.files], np.concatenate([p.pids for p in parts]),
                         np.concatenate([p.cams for p in parts]))
    return ReIDDataset(f"msmt17_{found[0].lower()}", root, read_list(lists["query"], test_dir),
                       read_list(lists["gallery"], test_dir), train)


def load_synthetic(root: str, with_train: bool = True, **_) -> ReIDDataset:
    """Our synthetic world's split: `<world>/reid` or the world folder itself."""
    if fs.exists(fs.join(root, "reid", "query")):
        root = fs.join(root, "reid")
    return _market_family("synthetic", MARKET, root, with_train)


LOADERS: dict[str, Callable[..., ReIDDataset]] = {
    "market1501": load_market1501, "dukemtmc": load_dukemtmc, "cuhk03np": load_cuhk03np,
    "msmt17": load_msmt17, "synthetic": load_synthetic}


def _first_image_name(folder: str) -> str:
    files = fs.list_files(folder, IMAGE_SUFFIXES)
    return posixpath.basename(files[0]) if files else ""


def _has_layout(root: str) -> bool:
    """Whether `root` itself holds one of the layouts (without checking its file names)."""
    return any(fs.exists(fs.join(root, *p)) for p in (("reid", "query"), ("list_query.txt",), ("detected",),
                                                      ("labeled",), ("query",)))


def _detect_here(root: str) -> str | None:
    """The layout of `root` itself, or None."""
    if fs.exists(fs.join(root, "reid", "query")):
        return "synthetic"
    if fs.exists(fs.join(root, "list_query.txt")):
        return "msmt17"
    if fs.exists(fs.join(root, "detected")) or fs.exists(fs.join(root, "labeled")):
        return "cuhk03np"
    if fs.exists(fs.join(root, "query")) and fs.exists(fs.join(root, "bounding_box_test")):
        name = _first_image_name(fs.join(root, "query"))
        if not name:
            raise CionError(f"{fs.join(root, 'query')}: no images")
        for style, dataset in ((MARKET, "market1501"), (DUKE, "dukemtmc"), (CUHK03NP, "cuhk03np")):
            if style.pattern.match(name):
                if dataset == "market1501" and not fs.is_remote(root) and fs.exists(fs.join(root, "..", "identities.json")):
                    return "synthetic"  # a world's reid/ folder
                return dataset
        raise CionError(f"{root}: query/ file names such as {name!r} follow none of the Market-1501, "
                        "DukeMTMC-reID or CUHK03-NP conventions")
    return None


def _subfolders(root: str) -> list[str]:
    fsys, path = fs.get_fs(root)
    try:
        entries = fsys.ls(path, detail=True)
    except Exception:
        return []
    names = sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory")
    return [fs.join(root, n) for n in names if not n.startswith(".")]


def detect_dataset(root: str) -> tuple[str, str]:
    """(loader name, folder) for a dataset folder: `root` itself, or its one sub-folder holding a
    known layout (e.g. msmt17/ holding MSMT17_V1/). CionError naming `root` otherwise."""
    if not fs.exists(root):
        raise CionError(f"{root}: not found")
    name = _detect_here(root)
    if name is not None:
        return name, root
    found = [(n, sub) for sub in _subfolders(root) if (n := _detect_here(sub)) is not None]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise CionError(f"{root}: holds several datasets ({', '.join(posixpath.basename(s) for _, s in found)}); "
                        "give one of them as the data folder")
    raise CionError(f"{root}: not a ReID dataset folder: expected Market-1501 / DukeMTMC-reID (query/, "
                    "bounding_box_test/), CUHK03-NP (detected/, labeled/), MSMT17 (list_query.txt, test/) "
                    "or a synthetic world (reid/)")


def dataset_names() -> list[str]:
    return list(LOADERS)


def load_dataset(name: str | None, root: str, with_train: bool = True, cuhk03_protocol: str = "detected",
                 msmt17_train: str = "train") -> ReIDDataset:
    """The splits of the dataset at `root` (local or s3://); `name` None or "" detects the layout.
    A named dataset also looks one folder down (e.g. msmt17/MSMT17_V1/)."""
    if not name:
        name, root = detect_dataset(root)
    elif name not in LOADERS:
        raise CionError(f"unknown dataset {name!r}: one of {', '.join(LOADERS)}")
    elif fs.exists(root) and not _has_layout(root):
        subs = [s for s in _subfolders(root) if _has_layout(s)]
        if len(subs) == 1:
            root = subs[0]
    if not fs.exists(root):
        raise CionError(f"{root}: not found")
    return LOADERS[name](root, with_train=with_train, cuhk03_protocol=cuhk03_protocol, msmt17_train=msmt17_train)
