"""`conveyor infer`: send images or .npy tensors to a running pipeline and print its outputs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..client import Client, image_tensor
from ..errors import UsageError

__all__ = ["format_outputs", "load_inputs", "register"]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "infer", help="send image files or .npy tensors to a running pipeline and print the outputs"
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="image files (sent as one BYTES batch) or one .npy file")
    parser.add_argument("--url", default="127.0.0.1:8001", help="gateway gRPC address (default 127.0.0.1:8001)")
    parser.add_argument("--model", default="", help="model name (default: the one the gateway serves)")
    parser.add_argument("--input", default=None, help="input name (default: the model's only input)")
    parser.add_argument("--output", action="append", default=[], help="output to print (repeatable; default all)")
    parser.add_argument("--timeout", type=float, default=60.0, help="request deadline in seconds (default 60)")
    parser.add_argument("--json", action="store_true", help="print the outputs as one JSON object")
    parser.set_defaults(handler=_main)


def load_inputs(files: list[str]) -> npt.NDArray[Any]:
    """One tensor from the files: a single .npy as is, or image files as a BYTES batch [N]."""
    paths = [Path(f) for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UsageError(f"FILE: no such file: {', '.join(missing)}")
    npy = [p for p in paths if p.suffix == ".npy"]
    if npy:
        if len(paths) != 1:
            raise UsageError("FILE: give one .npy file, or only image files")
        return np.asarray(np.load(npy[0], allow_pickle=False))
    return image_tensor([p.read_bytes() for p in paths])


def _plain(array: npt.NDArray[Any]) -> Any:
    """JSON-ready values; BYTES elements become text."""
    if array.dtype == np.object_:
        text = np.empty(array.shape, dtype=object)
        for index, item in np.ndenumerate(array):
            text[index] = bytes(item).decode(errors="replace")
        return text.tolist()
    return array.tolist()


def format_outputs(outputs: dict[str, npt.NDArray[Any]]) -> str:
    lines = []
    for name, array in outputs.items():
        lines.append(f"{name} {array.dtype if array.dtype != np.object_ else 'BYTES'} {list(array.shape)}")
        lines.append(f"  {json.dumps(_plain(array))}")
    return "\n".join(lines)


def _main(args: argparse.Namespace) -> int:
    tensor = load_inputs(args.files)
    with Client(args.url, model=args.model, timeout=args.timeout) as client:
        inputs = {args.input: tensor} if args.input else tensor
        outputs = client.infer(inputs, outputs=args.output or None)
    if args.json:
        print(json.dumps({name: _plain(array) for name, array in outputs.items()}))
    else:
        print(format_outputs(outputs))
    sys.stdout.flush()
    return 0
