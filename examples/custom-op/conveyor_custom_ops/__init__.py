"""A custom op package for Conveyor, shipped in its own image (see ../Dockerfile)."""

from .affine import Affine

__all__ = ["Affine"]
