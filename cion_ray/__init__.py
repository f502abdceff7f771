"""cion-ray: distributed CION data construction and pre-training on Ray."""
__version__ = "0.1.0"
