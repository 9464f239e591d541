"""bnclaims: claims about batch normalization, checked by NumPy experiments."""

__version__ = "0.1.0"
