"""capo: Calibrated Preference Optimization for text-to-image diffusion."""

__version__ = "0.1.0"
