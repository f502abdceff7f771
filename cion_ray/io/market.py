"""Market-1501 file names: `PPPP_cCsS_FFFFFF_NN.jpg`.

PPPP: person id (4 digits; -1 junk, 0000 distractor), C: camera (one digit,
1-9), S: sequence/session, FFFFFF: frame number, NN: box index in that frame.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MARKET_RE = re.compile(r"^(-1|\d{4})_c(\d)s(\d+)_(\d{6})_(\d{2})\.jpg$")


@dataclass(frozen=True)
class MarketName:
    pid: int
    camera: int
    session: int
    frame: int
    index: int


def market_name(pid: int, camera: int, session: int, frame: int, index: int = 1) -> str:
    if not 1 <= camera <= 9:
        raise ValueError(f"camera must be 1..9, got {camera}")
    p = "-1" if pid < 0 else f"{pid:04d}"
    return f"{p}_c{camera}s{session}_{frame:06d}_{index:02d}.jpg"


def parse_market_name(name: str) -> MarketName | None:
    m = MARKET_RE.match(name)
    if not m:
        return None
    pid, cam, sess, frame, idx = m.groups()
    return MarketName(int(pid), int(cam), int(sess), int(frame), int(idx))
