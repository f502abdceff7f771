"""Sliding ranges over the video order.

Ranges of W consecutive videos start every S videos (S < W, so they overlap); the last
range is aligned to the end. Every pair of videos at most W - S apart shares a range.
"""
from __future__ import annotations


def sliding_ranges(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Half-open [start, end) index ranges covering 0..n-1."""
    if window < 2 or not 1 <= stride < window:
        raise ValueError(f"need window >= 2 and 1 <= stride < window, got W={window}, S={stride}")
    if n <= 0:
        return []
    if n <= window:
        return [(0, n)]
    out = [(s, s + window) for s in range(0, n - window + 1, stride)]
    if out[-1][1] < n:
        out.append((n - window, n))
    return out


def range_key(video_ids: list[str]) -> str:
    """A stable name for a range's content: the same videos in the same order give the same key."""
    import hashlib
    return hashlib.sha256("\n".join(video_ids).encode()).hexdigest()[:20]
