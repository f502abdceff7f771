"""Hyperparameter searches on Ray Tune: pre-training (`cion-ray tune pretrain`) and curation
(`cion-ray tune curate`); the search-space files they share (space.py)."""
