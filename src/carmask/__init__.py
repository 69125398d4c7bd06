"""carmask: mask cars out of studio photos (the Carvana Image Masking Challenge, made real)."""

__version__ = "0.1.0"
