"""A deterministic synthetic multi-camera pedestrian world with ground truth.

`generate_world(SynthConfig(...), out)` writes videos, MOTChallenge files, the
identity map, a Market-1501 style split of held-out identities and a preview.
"""
from cion_ray.synth.config import DetNoiseConfig, ReidSplitConfig, SynthConfig, preset
from cion_ray.synth.generate import WorldSummary, generate_world

__all__ = ["DetNoiseConfig", "ReidSplitConfig", "SynthConfig", "WorldSummary", "generate_world", "preset"]
