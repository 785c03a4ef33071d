"""`conveyor` loads only the command it runs, and every command is listed when none is named."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conveyor_runtime.cli import build_parser
from conveyor_runtime.cli.main import requested_command
from conveyor_runtime.version import __version__

PROBE = """
import sys
from conveyor_runtime.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
heavy = sorted(m for m in ("conveyor_operator", "conveyor_benchmarks", "kopf", "kubernetes") if m in sys.modules)
print("LOADED", ",".join(heavy))
"""


def _loaded_by(argv: list[str]) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, timeout=120, check=True
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("LOADED"))
    return [name for name in line.removeprefix("LOADED").strip().split(",") if name]


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["step", "--port", "1"], "step"),
        (["--log-level", "DEBUG", "run", "x.yaml"], "run"),
        (["--log-level=DEBUG", "infer", "a.png"], "infer"),
        (["--help"], None),
        ([], None),
    ],
)
def test_cli_requested_command_is_the_first_word(argv: list[str], command: str | None) -> None:
    assert requested_command(argv) == command


def test_cli_step_loads_neither_the_operator_nor_the_benchmarks() -> None:
    assert _loaded_by(["step", "--help"]) == []


def test_cli_lists_every_command_when_none_is_named() -> None:
    parser = build_parser()
    help_text = parser.format_help()
    for command in ("step", "gateway", "run", "infer", "bench", "operator", "crd"):
        assert command in help_text
    assert "bench" in build_parser(["nosuch"]).format_help()  # an unknown name still lists them all


def test_cli_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser(["--version"]).parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"conveyor {__version__}"
