"""sit: Scalable Interpolant Transformers — train, sample, evaluate and convert SiT models."""

__version__ = "0.1.0"
