"""The architectural rule: algorithm packages never import Ray (only cion_ray.runtime does)."""
import pkgutil
import subprocess
import sys
from pathlib import Path

import cion_ray

PURE = sorted(
    f"cion_ray.{m.name}" for m in pkgutil.iter_modules(cion_ray.__path__) if m.name not in ("runtime",)
)


def test_there_are_pure_packages():
    assert "cion_ray.synth" in PURE and "cion_ray.io" in PURE


def test_pure_packages_do_not_import_ray():
    # import every module under every pure package, then look at sys.modules
    code = (
        "import importlib, pkgutil, sys\n"
        f"roots = {PURE!r}\n"
        "for r in roots:\n"
        "    m = importlib.import_module(r)\n"
        "    if hasattr(m, '__path__'):\n"
        "        for sub in pkgutil.walk_packages(m.__path__, r + '.'):\n"
        "            importlib.import_module(sub.name)\n"
        "bad = sorted(k for k in sys.modules if k == 'ray' or k.startswith('ray.'))\n"
        "print('RAY_MODULES', len(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stdout + r.stderr


def test_only_runtime_mentions_ray_imports():
    root = Path(cion_ray.__file__).parent
    offenders = []
    for py in root.rglob("*.py"):
        if "runtime" in py.relative_to(root).parts:
            continue
        for line in py.read_text().splitlines():
            s = line.strip()
            if s.startswith("import ray") or s.startswith("from ray"):
                offenders.append(f"{py}: {s}")
    assert not offenders, offenders
