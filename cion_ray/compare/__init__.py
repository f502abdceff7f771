"""The comparison of pre-training data sources on held-out people: the same backbone and budget
pre-trained on single instances, tracklets, curated identities or ground truth, against random
and ImageNet initialisation and a supervised ID loss (cion-ray compare; jobs/compare.py)."""
