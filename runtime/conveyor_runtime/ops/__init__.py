"""Ops a step can run: the Op API users subclass, the built-in ops by short name, and loading `package.module:Class`."""

from __future__ import annotations

import importlib

from .base import Arrays, Op, OpContext, RequestContext, Skip, TensorSpec

__all__ = ["BUILTIN_OPS", "Arrays", "Op", "OpContext", "RequestContext", "Skip", "TensorSpec", "load_op"]

#: Short names usable as a step's `op:`; values are import references (loaded on use).
BUILTIN_OPS: dict[str, str] = {
    "image-preprocess": "conveyor_runtime.ops.vision:Preprocess",
    "preprocess": "conveyor_runtime.ops.vision:Preprocess",
    "topk": "conveyor_runtime.ops.vision:TopK",
    "identity": "conveyor_runtime.ops.base:Op",
}


def load_op(reference: str) -> type[Op]:
    """The Op class for a built-in name or `package.module:Class`; raises ValueError saying what to fix."""
    target = BUILTIN_OPS.get(reference, reference)
    module_name, sep, attribute = target.partition(":")
    if not sep:
        raise ValueError(f"unknown op {reference!r}; use one of {', '.join(sorted(BUILTIN_OPS))} or `package.module:Class`")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"op {reference!r}: cannot import module {module_name!r}: {exc}") from exc
    cls = getattr(module, attribute, None)
    if not (isinstance(cls, type) and issubclass(cls, Op)):
        raise ValueError(f"op {reference!r}: {attribute!r} in {module_name} is not a subclass of conveyor_runtime.Op")
    return cls
