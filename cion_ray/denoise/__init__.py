"""Denoising levels L1 (single tracklet) and L2 (short-range, single video), pure numpy.

Features are L2-normalised rows; distances are cosine distances d = 1 - <a, b>.
"""
