"""The Ray layer: the only package that imports Ray. Each module wraps a pure stage."""
import os

# Read by Ray at import: no usage stats; keep per-chunk progress lines (they differ only in numbers).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
