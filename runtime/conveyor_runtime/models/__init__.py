"""ONNX models that Conveyor builds itself for its examples, tests and benchmarks (none is downloaded)."""

from .builders import ensure_model

__all__ = ["ensure_model"]
