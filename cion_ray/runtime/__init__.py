"""The Ray layer: the only package that imports Ray. Each module wraps a pure stage."""
