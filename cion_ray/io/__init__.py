"""Input/output: video decoding, Parquet tables, MOT / Market-1501 / CION-AL formats, filesystems."""
