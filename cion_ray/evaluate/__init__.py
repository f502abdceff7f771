"""Evaluation: clustering quality of identity assignments; ReID retrieval (dataset loaders,
chunked ranking, k-reciprocal re-ranking, CMC / mAP / mINP) and the evaluate stage's pure pipeline."""
