"""A compact HTTP body for one request tensor (what the Ray Serve client sends): encoded images as length-prefixed
bytes, pixel arrays as ``.npy``; answers come back as JSON top-k labels."""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["CONTENT_TYPES", "decode_body", "encode_body"]

IMAGES = "application/x-conveyor-images"
NPY = "application/x-npy"
CONTENT_TYPES = (IMAGES, NPY)
_LENGTH = struct.Struct("<I")


def encode_body(array: npt.NDArray[Any]) -> tuple[bytes, str]:
    """(body, content type): a BYTES tensor ``[N]`` as N length-prefixed images, anything else as ``.npy``."""
    if array.dtype == np.object_:
        parts = []
        for item in array.reshape(-1):
            data = bytes(item)
            parts += [_LENGTH.pack(len(data)), data]
        return b"".join(parts), IMAGES
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue(), NPY


def decode_body(body: bytes, content_type: str) -> npt.NDArray[Any]:
    """The tensor `encode_body` made; `ValueError` naming what is wrong with a malformed body."""
    if content_type == NPY:
        return np.load(io.BytesIO(body), allow_pickle=False)  # type: ignore[no-any-return]
    if content_type != IMAGES:
        raise ValueError(f"content type must be one of {', '.join(CONTENT_TYPES)}, got {content_type!r}")
    images: list[bytes] = []
    offset = 0
    while offset < len(body):
        if offset + _LENGTH.size > len(body):
            raise ValueError(f"truncated length prefix at byte {offset} of {len(body)}")
        (length,) = _LENGTH.unpack_from(body, offset)
        offset += _LENGTH.size
        if offset + length > len(body):
            raise ValueError(f"image {len(images)} claims {length} bytes but only {len(body) - offset} remain")
        images.append(body[offset : offset + length])
        offset += length
    array = np.empty(len(images), dtype=object)
    array[:] = images
    return array
