"""Evaluation: clustering quality of identity assignments; ReID retrieval metrics."""
