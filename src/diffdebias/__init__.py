"""diffdebias: remove dataset bias from image classifiers with diffusion models."""

__version__ = "0.1.0"
