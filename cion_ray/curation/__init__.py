"""Curation: embeddings -> L1 / L2 per video -> L3 sliding-range linking -> identities, reports, exports.

Pure orchestration of the denoise and linking packages; `cion_ray.runtime.curate` scales it."""
