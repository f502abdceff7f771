"""The capacity plan: docs/capacity.md from the rates in benchmarks/RESULTS.md.

    python benchmarks/capacity.py [--gpus 8] [--cpus 256] [--minutes-per-video 10] [--out docs/capacity.md]

Re-run it whenever a benchmark appends new rates; the plan states each assumption it makes.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from cion_ray.capacity import Assumptions, plan_markdown
from cion_ray.errors import CionError

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--out", default=str(HERE.parent / "docs" / "capacity.md"))
    defaults = Assumptions()
    for f in fields(Assumptions):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                        default=getattr(defaults, f.name))
    args = ap.parse_args(argv)
    a = Assumptions(**{f.name: getattr(args, f.name) for f in fields(Assumptions)})
    command = "python benchmarks/capacity.py" + "".join(" " + shlex.quote(x) for x in (argv or sys.argv[1:]))
    try:
        text = plan_markdown(Path(args.results).read_text(), a, command=command)
    except (CionError, OSError) as e:
        print(f"capacity: {e}", file=sys.stderr)
        return 2
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
