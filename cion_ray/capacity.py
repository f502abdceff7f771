"""A capacity plan from measured rates: how many devices and hours a CION-scale run needs.

The rates come from benchmarks/RESULTS.md (the newest section of each benchmark); the sizes
and the few numbers no benchmark measures are assumptions, each stated in the plan with
where it comes from. `plan_markdown` is pure: benchmarks/capacity.py reads RESULTS.md and
writes docs/capacity.md with it, so the plan follows the rates whenever they are re-measured.
"""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass

from cion_ray.errors import CionError

# Reference run of the paper: ResNet50-IBN, 100 epochs on CION-AL, 8 V100 GPUs, about 5 days.
CION_AL_IMAGES = 3_898_086
CION_AL_IDENTITIES = 246_904
REFERENCE = {"gpus": 8, "gpu": "V100", "days": 5.0, "epochs": 100, "images": CION_AL_IMAGES}


@dataclass
class Section:
    title: str  # the heading without its date
    date: str  # as written in the heading, or ""
    body: str

    @property
    def source(self) -> str:
        return f"{self.title} ({self.date})" if self.date else self.title


@dataclass
class Rate:
    name: str
    value: float
    unit: str
    source: str  # the RESULTS.md section it was read from
    how: str  # how the number was taken from it


@dataclass
class Assumptions:
    videos: int = 21_000  # LUPerson-NL's video count
    minutes_per_video: float = 10.0  # not published: an assumption, change it with --minutes-per-video
    fps: float = 5.0  # frames tracked per second of video (every 5th frame of 25 fps footage)
    crops: int = 10_000_000  # LUPerson-NL's crops (its 10M images)
    tracklets_per_video: int = 500  # ~ crops / videos / (images per tracklet after L1): an assumption
    cpus: int = 256  # CPU cores for the CPU stages
    gpus: int = 8  # GPUs for the GPU stages
    detect_fps_per_gpu: float = 600.0  # YOLO11n batched on one GPU: not measured here (see the plan)
    epochs: int = 100
    images: int = CION_AL_IMAGES
    ddp_efficiency: float = 0.9  # multi-GPU scaling of the training step: an assumption
    views_cost: float = 4.7  # training cost of one image in units of one 256x128 forward+backward


_HEAD = re.compile(r"^## (.+?)(?: \((\d{4}-\d\d-\d\d[^)]*)\))?\s*$")


def sections(text: str) -> list[Section]:
    """RESULTS.md -> its `## ` sections in file order."""
    out: list[Section] = []
    for line in text.splitlines():
        m = _HEAD.match(line)
        if m:
            out.append(Section(m.group(1).strip(), m.group(2) or "", ""))
        elif out:
            out[-1].body += line + "\n"
    return out


def _newest(secs: list[Section], prefix: str, must: str) -> Section | None:
    """The last section whose title starts with `prefix` and whose body matches `must`."""
    found = [s for s in secs if s.title.startswith(prefix) and re.search(must, s.body, re.M)]
    return found[-1] if found else None


def _cores(body: str) -> int:
    m = re.search(r"machine:.*?(\d+) cores", body)
    return int(m.group(1)) if m else 1


def _table_rows(body: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in body.splitlines() if line.strip().startswith("|") and not set(line) <= set("|-: ")]


def _scale_table(s: Section, column: str) -> list[dict[str, str]]:
    """The rows of the table in a bench_scale section that has `column`, as dicts by heading."""
    for block in s.body.split("\n\n"):
        rows = _table_rows(block)
        if rows and column in rows[0]:
            return [dict(zip(rows[0], r)) for r in rows[1:] if len(r) == len(rows[0])]
    return []


def rates(text: str) -> dict[str, Rate]:
    """The rates the plan needs, each from the newest RESULTS.md section that has it. A missing
    one raises a CionError naming the benchmark that measures it."""
    secs = sections(text)
    got: dict[str, Rate] = {}

    s = _newest(secs, "bench_track", r"^\| ray\d+ \|")
    if s:
        rows = {r[0]: r for r in _table_rows(s.body)}
        best = max((k for k in rows if re.fullmatch(r"ray\d+", k)), key=lambda k: int(k[3:]))
        cores = _cores(s.body)
        got["track_cpu"] = Rate("tracking (public detections, ByteTrack, crops), per CPU core",
                                float(rows[best][1]) / cores, "frames/s", s.source,
                                f"{best} median {rows[best][1]} frames/s over {cores} cores")

    s = _newest(secs, "bench_link", r"^\| tracklets \|.*\| total \(s\) \|(?:.*\n)*?\| 1000000 \|")
    if s:
        rows = _table_rows(s.body)
        head = next(r for r in rows if r[0] == "tracklets" and "total (s)" in r)
        row = next(r for r in rows if r[0] == "1000000")
        total = float(row[head.index("total (s)")])
        got["link"] = Rate("cross-video linking end to end (ranges + reducer)", 1_000_000 / total,
                           "tracklets/s", s.source, f"1M tracklets in {total:g} s on {_cores(s.body)} cores")
        if "reducer peak (MiB)" in head:
            mib = float(row[head.index("reducer peak (MiB)")])
            got["link_memory"] = Rate("linking reducer peak memory per tracklet", mib * 2**20 / 1_000_000, "bytes",
                                      s.source, f"{mib:g} MiB at 1M tracklets")

    s = _newest(secs, "pipeline", r"embedding \d+ crops in [\d.]+ s")
    if s:
        m = re.search(r"embedding (\d+) crops in ([\d.]+) s", s.body)
        cores = _cores(s.body) if "machine:" in s.body else 2
        got["embed_cpu"] = Rate("embedding with the weights-free descriptor, per CPU core",
                                int(m.group(1)) / float(m.group(2)) / cores, "crops/s", s.source,
                                f"{m.group(1)} crops in {m.group(2)} s on {cores} cores (includes start-up)")

    s = _newest(secs, "bench_pretrain_gpu", r"\d+ img/s \(median of \d+\)")
    if s:
        m = re.search(r"(\d+) img/s \(median of \d+\)", s.body)
        gpu = re.search(r"GPU \(([^)]+)\)", s.body)
        got["gpu_step"] = Rate("ResNet50 256x128 forward+backward, one GPU", float(m.group(1)), "img/s", s.source,
                               f"bf16, batch 256, {gpu.group(1) if gpu else 'GPU'}")

    loops = [x for x in secs if x.title.startswith("bench_pretrain_gpu") and "| epoch |" in x.body]
    if loops:
        s = loops[-1]
        rows = _table_rows(s.body)
        col = rows[0].index("img/s")
        vals = [float(r[col]) for r in rows[1:] if r[0].isdigit() and int(r[0]) > 1]
        gpu = re.search(r"machine:.*?(NVIDIA [^,]+)", s.body)
        got["train_loop_gpu"] = Rate("pre-training loop, released views (2 x 256x128 + 8 x 128x64), one GPU",
                                     statistics.median(vals), "img/s", s.source,
                                     f"median over epochs 2+ on {gpu.group(1) if gpu else 'one GPU'}; "
                                     "bound by JPEG decoding and views on the loader processes")

    # export and pack rates: from bench_export / bench_pretrain_data, or from bench_scale (both, by
    # size), whichever section is newer; bench_scale's at its largest size
    scale = _newest(secs, "bench_scale", r"^\| crops \| identities \|")
    s = _newest(secs, "bench_export", r"^\| actors \|")
    e_rows = _scale_table(scale, "identities") if scale else []
    if e_rows and (not s or secs.index(scale) > secs.index(s)):
        n = max(int(r["crops"].replace(",", "")) for r in e_rows)
        best = max((r for r in e_rows if int(r["crops"].replace(",", "")) == n), key=lambda r: int(r["actors"]))
        got["export"] = Rate("curate export (CION-AL files + JSON), per export actor",
                             float(best["crops/s"].replace(",", "")) / int(best["actors"]), "crops/s", scale.source,
                             f"{best['crops/s']} crops/s with {best['actors']} actor(s) at {n:,} crops")
    elif s:
        rows = _table_rows(s.body)
        head = rows[0]
        best = max(rows[1:], key=lambda r: int(r[0]))
        per = float(best[head.index("crops/s (median)")]) / int(best[0])
        got["export"] = Rate("curate export (CION-AL + Market files), per export actor", per, "crops/s", s.source,
                             f"{best[head.index('crops/s (median)')]} crops/s with {best[0]} actor(s)")

    s = _newest(secs, "pretrain data path", r"Pack build \(once, on the driver\): \d+ s")
    scale = _newest(secs, "bench_scale", r"^\| crops \| data GB \| pack build s \|")
    p_rows = [r for r in _scale_table(scale, "pack build s") if r["pack build s"]] if scale else []
    if p_rows and (not s or secs.index(scale) > secs.index(s)):
        big = max(p_rows, key=lambda r: int(r["crops"].replace(",", "")))
        n, sec = int(big["crops"].replace(",", "")), float(big["pack build s"])
        got["pack"] = Rate("pre-training pack build (one process)", n / sec, "crops/s", scale.source,
                           f"{n:,} crops in {sec:g} s")
    elif s:
        n = int(re.search(r"([\d,]+) synthetic crops", s.body).group(1).replace(",", ""))
        sec = float(re.search(r"Pack build \(once, on the driver\): (\d+) s", s.body).group(1))
        got["pack"] = Rate("pre-training pack build (one process)", n / sec, "crops/s", s.source,
                           f"{n:,} crops in {sec:g} s")

    need = {"track_cpu": "bench_track", "link": "bench_link", "embed_cpu": "pipeline (make demo / jobs/pipeline.py)",
            "gpu_step": "bench_pretrain_gpu", "train_loop_gpu": "bench_pretrain_gpu"}
    missing = [f"{k} (run {v})" for k, v in need.items() if k not in got]
    if missing:
        raise CionError("benchmarks/RESULTS.md lacks the rates " + ", ".join(missing))
    return got


def _h(seconds: float) -> str:
    hours = seconds / 3600
    if hours < 1:
        return f"{seconds / 60:,.1f} min"
    return f"{hours:,.1f} h" if hours < 48 else f"{hours:,.0f} h ({hours / 24:,.1f} days)"


def plan(r: dict[str, Rate], a: Assumptions) -> dict:
    """Stage -> seconds and device counts, from the rates and the assumptions."""
    frames = a.videos * a.minutes_per_video * 60 * a.fps
    tracklets = a.videos * a.tracklets_per_video
    out = {"frames": frames, "tracklets": tracklets}
    out["track_cpu_s"] = frames / (r["track_cpu"].value * a.cpus)
    out["detect_gpu_s"] = frames / (a.detect_fps_per_gpu * a.gpus)
    out["embed_cpu_s"] = a.crops / (r["embed_cpu"].value * a.cpus)
    out["embed_gpu_s"] = a.crops / (r["gpu_step"].value * 3 * a.gpus)  # forward only: about a third of fwd+bwd
    out["link_s"] = tracklets / r["link"].value  # one machine: the reducer is serial
    out["export_s"] = a.images / (r["export"].value * a.cpus) if "export" in r else None
    out["pack_s"] = a.images / r["pack"].value if "pack" in r else None
    out["link_gib"] = tracklets * r["link_memory"].value / 2**30 if "link_memory" in r else None
    seen = a.images * a.epochs
    out["train_images"] = seen
    out["train_loop_s"] = seen / (r["train_loop_gpu"].value * a.gpus * a.ddp_efficiency)
    out["train_bound_s"] = seen / (r["gpu_step"].value / a.views_cost * a.gpus * a.ddp_efficiency)
    ref_s = REFERENCE["days"] * 86400
    out["reference_s"] = ref_s
    out["reference_per_gpu"] = REFERENCE["images"] * REFERENCE["epochs"] / (ref_s * REFERENCE["gpus"])
    return out


def plan_markdown(text: str, a: Assumptions, command: str = "python benchmarks/capacity.py") -> str:
    r = rates(text)
    p = plan(r, a)
    lines = [
        "# Capacity plan: CION scale on cion-ray",
        "",
        f"Generated by `{command}` from the newest sections of `benchmarks/RESULTS.md`; re-run it when a rate is",
        "re-measured. Every number below is either a measured rate (with its section) or an assumption (stated).",
        "",
        "## Measured rates",
        "",
        "| rate | value | from | how |",
        "|---|---:|---|---|",
    ]
    for x in r.values():
        lines.append(f"| {x.name} | {x.value:,.1f} {x.unit} | {x.source} | {x.how} |")
    lines += [
        "",
        "## Assumptions",
        "",
        "| assumption | value | why |",
        "|---|---:|---|",
        f"| videos | {a.videos:,} | LUPerson-NL's 21K street videos |",
        f"| minutes per video | {a.minutes_per_video:g} | not published; change with --minutes-per-video |",
        f"| frames tracked per second of video | {a.fps:g} | every 5th frame of 25 fps footage |",
        f"| crops | {a.crops:,} | LUPerson-NL's 10M images |",
        f"| tracklets per video | {a.tracklets_per_video:,} | about crops / videos; change with --tracklets-per-video |",
        f"| CPU cores / GPUs | {a.cpus:,} / {a.gpus} | the cluster being planned |",
        f"| detector frames/s per GPU | {a.detect_fps_per_gpu:g} | NOT measured here (no GPU tracking benchmark yet): "
        "YOLO11n's published T4 TensorRT latency is about 1.5 ms per 640 px frame |",
        f"| pre-training images x epochs | {a.images:,} x {a.epochs} | CION-AL, the released schedule |",
        f"| multi-GPU efficiency | {a.ddp_efficiency:g} | DDP across GPUs is not measured here |",
        f"| cost of one training image | {a.views_cost:g} x one 256x128 fwd+bwd | student: 2 global + 8 local views at "
        "1/4 of the pixels (4 units), teacher: 2 forwards (about 0.7) |",
        "",
        "## Curating LUPerson-NL scale",
        "",
        f"{p['frames']:,.0f} frames to track, {a.crops:,} crops to embed, {p['tracklets']:,} tracklets to link.",
        "",
        "| stage | devices | time | from |",
        "|---|---|---:|---|",
        f"| tracking (ByteTrack + crops, CPU) | {a.cpus} cores | {_h(p['track_cpu_s'])} | track_cpu |",
        f"| detection (YOLO on GPU) | {a.gpus} GPUs | {_h(p['detect_gpu_s'])} | assumed detector rate |",
        f"| embedding, weights-free descriptor | {a.cpus} cores | {_h(p['embed_cpu_s'])} | embed_cpu |",
        f"| embedding, timm backbone | {a.gpus} GPUs | {_h(p['embed_gpu_s'])} | gpu_step x 3 (forward only) |",
        f"| linking (ranges + reducer) | one machine | {_h(p['link_s'])} | link, scaled linearly (measured "
        "about 2x per doubling) |",
        "",
        *([f"The reducer holds every tracklet on one machine: about {p['link_gib']:,.0f} GiB at this size "
           "(its peak per tracklet at 1M, scaled linearly), so the linking machine needs that much memory.", ""]
          if p["link_gib"] else []),
        "Tracking with public detections costs only the tracker and the crops; with a detector the frame rate per",
        "GPU above bounds the stage. Denoising (L1/L2) is per video numpy work far below tracking's cost.",
        "",
        "## Pre-training ResNet50-IBN for 100 epochs on 3.9M images",
        "",
        f"{p['train_images']:,.0f} images seen. The reference run: {REFERENCE['gpus']} {REFERENCE['gpu']} GPUs, about "
        f"{REFERENCE['days']:g} days, i.e. {p['reference_per_gpu']:,.0f} img/s per GPU.",
        "",
        "| case | devices | time | GPU-hours | per GPU |",
        "|---|---|---:|---:|---:|",
        f"| measured loop rate (data path bound) | {a.gpus} GPUs | {_h(p['train_loop_s'])} | "
        f"{p['train_loop_s'] * a.gpus / 3600:,.0f} | {r['train_loop_gpu'].value:,.0f} img/s |",
        f"| compute bound (loader keeps up) | {a.gpus} GPUs | {_h(p['train_bound_s'])} | "
        f"{p['train_bound_s'] * a.gpus / 3600:,.0f} | {r['gpu_step'].value / a.views_cost:,.0f} img/s |",
        f"| reference (paper) | {REFERENCE['gpus']} {REFERENCE['gpu']} | {_h(p['reference_s'])} | "
        f"{p['reference_s'] * REFERENCE['gpus'] / 3600:,.0f} | {p['reference_per_gpu']:,.0f} img/s |",
        *([f"Before training, the pack of the {a.images:,} images (pretrain/pack.py, built once by one process "
           f"on the driver) takes about {_h(p['pack_s'])}; each worker then reads only its share."]
          if p["pack_s"] else []),
        *([f"Curate's exports of those images (CION-AL files and JSON, Market when it fits) with one export actor per "
           f"core: about {_h(p['export_s'])} at the measured per-actor rate, if storage keeps up (the rate is bound "
           "by creating files)."] if p["export_s"] else []),
        "",
        "The GPU rates were measured on an H100 with ResNet50 (the IBN variant adds InstanceNorm to half the",
        "channels of layers 1-3; its step was not timed) and 14 loader processes on 16 cores: a GPU needs about",
        "that many cores beside it to reach the loop rate.",
        "",
        "What it says: the measured loop rate is set by JPEG decoding and multi-crop views on the loader",
        "processes, not by the GPU; the compute-bound row is what moving decoding and views to the GPU would",
        "reach. Both rows assume the data path delivers each worker its shard (bytes read per worker about the",
        "data set / workers), which `benchmarks/bench_pretrain_data.py` measures, and",
        "`benchmarks/bench_scale.py` by data set size (100k to 4M crops).",
        "",
    ]
    return "\n".join(lines)
