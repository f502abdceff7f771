"""Identity appearance: clothing, pattern, skin, hair, build, bag.

An `Identity` is everything needed to draw one person the same way in every
video. Attributes are drawn from small palettes so that some identities share
a colour (ReID must use the rest of the appearance), with a small per-person
colour jitter so two "navy" tops are alike but not identical.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# RGB, 0-255.
PALETTE = {
    "black": (25, 25, 28), "white": (235, 235, 230), "grey": (128, 128, 128),
    "navy": (30, 40, 95), "blue": (45, 90, 190), "lightblue": (130, 180, 230),
    "red": (200, 35, 40), "darkred": (115, 20, 30), "green": (40, 140, 60),
    "olive": (110, 115, 50), "yellow": (235, 205, 50), "orange": (235, 125, 35),
    "pink": (235, 140, 175), "purple": (115, 55, 150), "brown": (110, 70, 40),
    "beige": (205, 185, 145), "teal": (30, 135, 135),
}
TOP_COLOURS = list(PALETTE)
BOTTOM_COLOURS = ["black", "navy", "blue", "grey", "beige", "brown", "olive", "white", "darkred"]
SKIN_TONES = [(245, 210, 180), (225, 185, 150), (195, 145, 110), (150, 105, 75), (105, 70, 50)]
HAIR_TONES = [(20, 15, 12), (70, 45, 25), (130, 90, 50), (200, 170, 110), (160, 160, 160)]
SHOE_TONES = [(20, 20, 20), (240, 240, 240), (90, 60, 40), (60, 60, 70)]

PATTERNS = ("plain", "hstripes", "vstripe", "logo", "two_tone")
SLEEVES = ("long", "short")
BOTTOM_STYLES = ("trousers", "shorts", "skirt")
HAIR_STYLES = ("short", "long", "hat")
BAGS = ("none", "backpack", "shoulder")


@dataclass(frozen=True)
class Identity:
    """How one person looks. Colours are RGB tuples; sizes are relative factors."""

    id: int
    top: tuple[int, int, int]
    top_name: str
    secondary: tuple[int, int, int]
    pattern: str
    sleeves: str
    bottom: tuple[int, int, int]
    bottom_name: str
    bottom_style: str
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    hair_style: str
    shoes: tuple[int, int, int]
    height: float  # relative to the average person, ~0.88..1.12
    build: float  # width factor, ~0.85..1.2
    bag: str
    bag_colour: tuple[int, int, int]
    speed: float  # walking speed factor, ~0.75..1.3

    def to_json(self) -> dict:
        return asdict(self)


def jitter_colour(rng: np.random.Generator, rgb, amount: int = 12) -> tuple[int, int, int]:
    v = np.asarray(rgb, dtype=np.int32) + rng.integers(-amount, amount + 1, size=3)
    return tuple(int(c) for c in np.clip(v, 0, 255))


def sample_identities(rng: np.random.Generator, n: int, first_id: int = 1) -> list[Identity]:
    """Draw `n` identities with ids first_id .. first_id + n - 1."""
    people = []
    for i in range(n):
        top_name = TOP_COLOURS[rng.integers(len(TOP_COLOURS))]
        bottom_name = BOTTOM_COLOURS[rng.integers(len(BOTTOM_COLOURS))]
        sec_name = TOP_COLOURS[rng.integers(len(TOP_COLOURS))]
        if sec_name == top_name:
            sec_name = "white" if top_name != "white" else "black"
        pattern = PATTERNS[rng.choice(len(PATTERNS), p=[0.4, 0.15, 0.15, 0.15, 0.15])]
        bag = BAGS[rng.choice(len(BAGS), p=[0.55, 0.25, 0.2])]
        people.append(Identity(
            id=first_id + i,
            top=jitter_colour(rng, PALETTE[top_name]), top_name=top_name,
            secondary=jitter_colour(rng, PALETTE[sec_name]),
            pattern=pattern,
            sleeves=SLEEVES[rng.integers(2)],
            bottom=jitter_colour(rng, PALETTE[bottom_name]), bottom_name=bottom_name,
            bottom_style=BOTTOM_STYLES[rng.choice(3, p=[0.7, 0.15, 0.15])],
            skin=jitter_colour(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 8),
            hair=jitter_colour(rng, HAIR_TONES[rng.integers(len(HAIR_TONES))], 8),
            hair_style=HAIR_STYLES[rng.choice(3, p=[0.55, 0.3, 0.15])],
            shoes=SHOE_TONES[rng.integers(len(SHOE_TONES))],
            height=float(rng.uniform(0.88, 1.12)),
            build=float(rng.uniform(0.85, 1.2)),
            bag=bag,
            bag_colour=jitter_colour(rng, PALETTE[TOP_COLOURS[rng.integers(len(TOP_COLOURS))]]),
            speed=float(rng.uniform(0.75, 1.3)),
        ))
    return people
