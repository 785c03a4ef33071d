"""Named numpy tensors (`Arrays`) and the shape helpers every layer shares: row counting and shape text."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy.typing as npt

__all__ = ["Arrays", "rows_of", "shape_text", "shared_rows"]

#: Named tensors; in a batch every tensor has the batch's rows along axis 0.
Arrays = dict[str, npt.NDArray[Any]]


def shared_rows(arrays: Arrays) -> int | None:
    """The first dimension every tensor shares, or None when they differ or one is a scalar (cannot batch)."""
    rows = {int(a.shape[0]) if a.ndim else None for a in arrays.values()}
    if len(rows) != 1:
        return None
    return rows.pop()


def rows_of(arrays: Arrays) -> int:
    """Rows of a request already checked to share its first dimension (a scalar counts as one row)."""
    for array in arrays.values():
        return int(array.shape[0]) if array.ndim else 1
    return 1


def shape_text(shape: Iterable[int | str | None]) -> str:
    """A shape as ``[1,3,-1]`` for messages; unknown dimensions print as ``?``, named ones by name."""
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"
