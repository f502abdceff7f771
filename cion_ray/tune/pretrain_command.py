"""(being built)"""
from __future__ import annotations

import argparse

from cion_ray.errors import CionError


def add_args(s: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise CionError("not built yet")
