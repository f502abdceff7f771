"""Ray job entry point for the whole pipeline: track -> curate -> pretrain -> evaluate from one
YAML config, every stage's output under one prefix; a re-submitted pipeline skips what is
committed and resumes what was interrupted.

    ray job submit --working-dir . -- python jobs/pipeline.py --config configs/pipeline-gpu.yaml \
        --set out=s3://bucket/cion --set videos=s3://bucket/videos
"""
from __future__ import annotations

import sys

from cion_ray.pipeline.command import main

if __name__ == "__main__":
    sys.exit(main())
