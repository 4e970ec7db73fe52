"""The procedural toy world: specs, motion, rasterisation, exact truth metrics, training clips, and the
research tools built on it (the drift benchmark and the trainer of the embedded default model).

The core modules (palette, world, prompts, raster, script, truth, clips) are pure NumPy and import nothing
else of memrope, so the default model's text encoder can use the vocabulary from below; ``benchmark`` and
``train`` sit on top of the generator.
"""
