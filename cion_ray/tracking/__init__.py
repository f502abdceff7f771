"""Tracking: detector sources, tracker glue, chunk plans and stitching, crops, MOT quality.

Pure code (no Ray): `cion_ray.runtime.track` scales it with Ray Data.
"""
