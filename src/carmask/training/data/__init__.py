"""Torch datasets and augmentation for training."""
