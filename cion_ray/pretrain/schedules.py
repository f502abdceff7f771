"""Per-iteration schedules as precomputed arrays (pure, testable, resumable by index)."""
from __future__ import annotations

import numpy as np


def cosine_schedule(base: float, final: float, epochs: int, iters_per_epoch: int, warmup_epochs: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """Linear warm-up from warmup_start to base over warmup_epochs, then a half cosine from base to
    final; one value per iteration, shape (epochs * iters_per_epoch,)."""
    warm = warmup_epochs * iters_per_epoch
    warmup = np.linspace(warmup_start, base, warm) if warm > 0 else np.array([])
    rest = epochs * iters_per_epoch - warm
    i = np.arange(rest)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / max(rest, 1)))
    out = np.concatenate([warmup, cos])
    assert len(out) == epochs * iters_per_epoch
    return out


def teacher_temp_schedule(start: float, final: float, warmup_epochs: int, epochs: int,
                          iters_per_epoch: int) -> np.ndarray:
    """DINO's teacher-temperature warm-up: linear from start to final over warmup_epochs, then
    final; one value per iteration, shape (epochs * iters_per_epoch,)."""
    n = epochs * iters_per_epoch
    warm = min(warmup_epochs * iters_per_epoch, n)
    return np.concatenate([np.linspace(start, final, warm), np.full(n - warm, final)])


def k_start_epochs(k_schedule: list[tuple[float, int]], epochs: int) -> list[tuple[int, int]]:
    """(fraction of the run, K) steps -> (first epoch, K), scaled to `epochs`. The released
    schedule over 100 epochs starts K = 2, 4, 6, 8 at epochs 0, 40, 60, 80."""
    return [(int(round(f * epochs)), int(k)) for f, k in k_schedule]


def k_at_epoch(k_schedule: list[tuple[float, int]], epochs: int, epoch: int) -> int:
    k = k_schedule[0][1]
    for start, kk in k_start_epochs(k_schedule, epochs):
        if epoch >= start:
            k = kk
    return int(k)


def k_values(k_schedule: list[tuple[float, int]], epochs: int) -> list[int]:
    """The distinct K a run of `epochs` epochs trains at, ascending (a step that starts at or
    after the last epoch is never reached)."""
    return sorted({k_at_epoch(k_schedule, epochs, e) for e in range(epochs)})
