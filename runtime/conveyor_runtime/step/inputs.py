"""Checking a request's tensors against what the step takes, before the request joins a batch."""

from __future__ import annotations

from ..arrays import Arrays, shape_text
from ..errors import InvalidRequest
from ..ops import TensorSpec
from ..protocol import datatype_of

__all__ = ["validate_inputs"]


def validate_inputs(step: str, specs: list[TensorSpec], inputs: Arrays, *, any_name: bool = False) -> Arrays:
    """Check a request's tensors against the step's inputs; raise InvalidRequest naming the input and reason.

    An op that declares no inputs (e.g. the built-in `identity`) takes whatever tensors it is given, but at least one.
    """
    if not specs:
        if not inputs:
            raise InvalidRequest(f"the request has no inputs; step {step!r} takes any tensors, but at least one")
        return inputs
    if any_name and len(specs) == 1 and len(inputs) == 1:
        inputs = {specs[0].name: next(iter(inputs.values()))}
    expected = ", ".join(repr(s.name) for s in specs)
    names = {s.name for s in specs}
    for name in inputs:
        if name not in names:
            raise InvalidRequest(f"unknown input {name!r}; step {step!r} expects {expected}")
    for spec in specs:
        if spec.name not in inputs:
            raise InvalidRequest(f"missing input {spec.name!r}; step {step!r} expects {expected}")
        array = inputs[spec.name]
        datatype = datatype_of(array)
        if datatype not in spec.datatypes:
            raise InvalidRequest(
                f"input {spec.name!r}: datatype {datatype}, expected {' or '.join(spec.datatypes)}"
            )
        if spec.shape is None:
            continue
        if array.ndim != len(spec.shape):
            raise InvalidRequest(
                f"input {spec.name!r}: shape {shape_text(array.shape)} has rank {array.ndim}, "
                f"expected rank {len(spec.shape)} like {shape_text(spec.shape)}"
            )
        for axis, (got, want) in enumerate(zip(array.shape, spec.shape)):
            if want >= 0 and got != want:
                what = "batch dimension (0)" if axis == 0 else f"dimension {axis}"
                raise InvalidRequest(
                    f"input {spec.name!r}: shape {shape_text(array.shape)} has {got} in {what}, "
                    f"expected {want} (shape {shape_text(spec.shape)}, -1 = any)"
                )
    return inputs
