"""memrope: unbounded streaming video generation with fixed-size, position-bounded KV caches."""

__version__ = "0.1.0"
