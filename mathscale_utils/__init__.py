"""MathScale: thin library behind the notebooks (extraction, graph, generation, fine-tuning, MWPBench)."""

__version__ = "0.1.0"
