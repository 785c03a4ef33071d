"""`local.spawn`: a child's merged output, exit code and signals, on both event loops `conveyor run` may use."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from conveyor_runtime.local.spawn import spawn

LOOPS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_spawned_child_gives_its_merged_output_and_exit_code(loop: str, tmp_path: Any) -> None:
    script = "import sys; print('out', flush=True); print('err', file=sys.stderr, flush=True); sys.exit(3)"

    async def scenario() -> tuple[bytes, int, int | None]:
        child = await spawn([sys.executable, "-c", script], cwd=str(tmp_path), env={"PATH": "/usr/bin:/bin"})
        output = await child.stdout.read()
        code = await child.wait()
        return output, code, child.returncode

    output, code, returncode = LOOPS[loop](scenario())
    assert output.split() == [b"out", b"err"]
    assert code == returncode == 3


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_spawned_child_can_be_signalled_and_its_death_is_seen(loop: str, tmp_path: Any) -> None:
    async def scenario() -> tuple[int | None, int, int]:
        child = await spawn([sys.executable, "-c", "import time; time.sleep(60)"], cwd=str(tmp_path), env={})
        running = child.returncode
        child.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(child.wait(), 30)
        child.kill()  # after its exit: a no-op, not an error
        child.close()  # its output was never read to its end
        return running, code, child.pid

    running, code, pid = LOOPS[loop](scenario())
    assert running is None and code == -signal.SIGTERM and pid > 0
