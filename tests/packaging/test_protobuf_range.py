"""The protobuf range pyproject.toml declares starts no lower than the committed gencode needs.

protobuf refuses generated code newer than its runtime, so regenerating with a newer protoc without raising
`protobuf>=` breaks every install that resolves an older protobuf (tritonclient[all] pins one). Loading the
gencode on each major of the range is scripts/check-packaging.py's job; this test is the quick guard.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "runtime" / "conveyor_runtime" / "protocol" / "proto"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _declared_protobuf() -> tuple[tuple[int, ...], int]:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in dependencies:
        match = re.fullmatch(r"protobuf\s*>=\s*([\d.]+)\s*,\s*<\s*(\d+)", requirement.strip())
        if match:
            return _version(match.group(1)), int(match.group(2))
    raise AssertionError(f"no `protobuf>=FLOOR,<MAJOR` among the dependencies: {dependencies}")


def test_protobuf_floor_is_not_older_than_the_committed_gencode() -> None:
    floor, _ = _declared_protobuf()
    gencode = sorted(PROTO_DIR.glob("*_pb2.py"))
    assert gencode
    for path in gencode:
        match = re.search(r"^# Protobuf Python Version: ([\d.]+)$", path.read_text(), re.MULTILINE)
        assert match, f"{path.name}: no 'Protobuf Python Version' header; regenerate it with scripts/gen-proto.sh"
        assert _version(match.group(1)) <= floor, (
            f"{path.name} is protobuf {match.group(1)} gencode but pyproject.toml admits protobuf "
            f"{'.'.join(map(str, floor))}: regenerate with scripts/gen-proto.sh (its pinned, older protoc)"
        )


def test_protobuf_range_spans_the_majors_users_have() -> None:
    # 5.x (older stacks), 6.x (tritonclient[all] pins <7) and 7.x (current grpcio-tools and friends)
    floor, ceiling = _declared_protobuf()
    assert floor[0] <= 5 and ceiling >= 8, f"protobuf range {floor}..<{ceiling} leaves out a major of 5, 6, 7"
