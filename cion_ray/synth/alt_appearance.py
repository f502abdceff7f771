"""Appearance of the "alt" style: people drawn from another distribution than `appearance`.

Muted, pastel and many dark clothes instead of saturated primaries; checks, diagonal
stripes, a big print or a jacket open over a shirt; scarves, caps, glasses and carried
items; other body proportions (head size, leg length, shoulder width). A world in this
style is one the hand-crafted curation descriptor was not tuned on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cion_ray.synth.appearance import Identity, jitter_colour

# RGB, 0-255: muted / desaturated, pastel and dark colours
ALT_PALETTE = {
    "charcoal": (55, 57, 62), "jet": (18, 18, 22), "darknavy": (22, 28, 55), "forest": (30, 60, 40),
    "espresso": (60, 40, 30), "plum": (70, 40, 65),
    "slate": (100, 115, 130), "sage": (140, 160, 130), "mauve": (160, 120, 140), "rust": (160, 85, 55),
    "mustard": (195, 160, 70), "khaki": (170, 155, 115), "denim": (85, 110, 145), "taupe": (140, 125, 110),
    "burgundy": (110, 35, 55), "camel": (190, 150, 100),
    "mint": (180, 230, 205), "lavender": (205, 190, 235), "peach": (250, 205, 175), "babyblue": (185, 215, 240),
    "lemon": (245, 240, 170), "blush": (245, 200, 210), "cream": (245, 238, 220),
}
DARK = ["charcoal", "jet", "darknavy", "forest", "espresso", "plum"]
MUTED = ["slate", "sage", "mauve", "rust", "mustard", "khaki", "denim", "taupe", "burgundy", "camel"]
PASTEL = ["mint", "lavender", "peach", "babyblue", "lemon", "blush", "cream"]
ALT_BOTTOMS = ["jet", "charcoal", "darknavy", "denim", "khaki", "taupe", "espresso", "slate", "cream"]
ALT_SKIN = [(240, 200, 170), (215, 170, 135), (180, 130, 95), (135, 90, 65), (90, 60, 45), (200, 160, 120)]
ALT_HAIR = [(15, 12, 10), (55, 35, 20), (150, 60, 35), (215, 190, 140), (200, 200, 200), (90, 70, 60)]
ALT_SHOES = [(15, 15, 15), (245, 245, 245), (140, 40, 40), (50, 70, 120), (120, 100, 70)]

ALT_PATTERNS = ("plain", "checks", "diagonal", "print", "open_jacket", "contrast_sleeves")
ALT_SLEEVES = ("long", "short", "none")
ALT_BOTTOM_STYLES = ("trousers", "wide", "shorts", "long_skirt")
ALT_HAIR_STYLES = ("short", "long", "bun", "shaved")
ALT_BAGS = ("none", "backpack", "crossbody")
ACCESSORIES = ("scarf", "cap", "glasses", "carried")
ACCESSORY_PROB = (0.25, 0.25, 0.3, 0.25)


@dataclass(frozen=True)
class AltIdentity(Identity):
    """An `Identity` of the "alt" style, with its accessories and body proportions."""

    accent: tuple[int, int, int]  # colour of scarf, cap and carried item
    accessories: tuple[str, ...]  # subset of ACCESSORIES
    head: float  # head size factor, ~0.85..1.25
    legs: float  # hip height as a fraction of the body height, ~0.44..0.56 (default figures: 0.50)
    shoulders: float  # shoulder width factor, ~0.85..1.35
    style: str = "alt"


def _top_name(rng: np.random.Generator) -> str:
    group = (DARK, MUTED, PASTEL)[rng.choice(3, p=[0.4, 0.35, 0.25])]
    return group[rng.integers(len(group))]


def sample_alt_identities(rng: np.random.Generator, n: int, first_id: int = 1) -> list[AltIdentity]:
    """Draw `n` "alt" identities with ids first_id .. first_id + n - 1."""
    people = []
    for i in range(n):
        top_name = _top_name(rng)
        sec_name = _top_name(rng)
        if sec_name == top_name:
            sec_name = "cream" if top_name in DARK else "jet"
        bottom_name = ALT_BOTTOMS[rng.integers(len(ALT_BOTTOMS))]
        pattern = ALT_PATTERNS[rng.choice(len(ALT_PATTERNS), p=[0.3, 0.14, 0.14, 0.14, 0.16, 0.12])]
        accessories = tuple(a for a, p in zip(ACCESSORIES, ACCESSORY_PROB) if rng.random() < p)
        accent = PASTEL + MUTED
        people.append(AltIdentity(
            id=first_id + i,
            top=jitter_colour(rng, ALT_PALETTE[top_name], 10), top_name=top_name,
            secondary=jitter_colour(rng, ALT_PALETTE[sec_name], 10),
            pattern=pattern,
            sleeves=ALT_SLEEVES[rng.choice(3, p=[0.6, 0.3, 0.1])],
            bottom=jitter_colour(rng, ALT_PALETTE[bottom_name], 10), bottom_name=bottom_name,
            bottom_style=ALT_BOTTOM_STYLES[rng.choice(4, p=[0.5, 0.2, 0.15, 0.15])],
            skin=jitter_colour(rng, ALT_SKIN[rng.integers(len(ALT_SKIN))], 8),
            hair=jitter_colour(rng, ALT_HAIR[rng.integers(len(ALT_HAIR))], 8),
            hair_style=ALT_HAIR_STYLES[rng.choice(4, p=[0.4, 0.3, 0.15, 0.15])],
            shoes=ALT_SHOES[rng.integers(len(ALT_SHOES))],
            height=float(rng.uniform(0.82, 1.18)),
            build=float(rng.uniform(0.8, 1.3)),
            bag=ALT_BAGS[rng.choice(3, p=[0.6, 0.2, 0.2])],
            bag_colour=jitter_colour(rng, ALT_PALETTE[DARK[rng.integers(len(DARK))]]),
            speed=float(rng.uniform(0.7, 1.4)),
            accent=jitter_colour(rng, ALT_PALETTE[accent[rng.integers(len(accent))]]),
            accessories=accessories,
            head=float(rng.uniform(0.85, 1.25)),
            legs=float(rng.uniform(0.44, 0.56)),
            shoulders=float(rng.uniform(0.85, 1.35)),
        ))
    return people
