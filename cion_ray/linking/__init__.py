"""L3 long-range cross-video linking: sliding ranges, linking relations, union-find, the reducer."""
