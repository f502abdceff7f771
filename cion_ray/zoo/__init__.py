"""Backbones: one factory over timm (and our own variants), and checkpoint loading."""
