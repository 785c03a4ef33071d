"""Child processes for `conveyor run`, started without fork() on any asyncio event loop.

uvloop's `subprocess_exec` starts a child with fork(), which runs gRPC's fork handlers in a process whose gRPC
threads are busy serving (measured: the runner died of SIGSEGV, "Check failed: next_worker->state == KICKED", in
1 of a few test runs). `subprocess.Popen` starts it with vfork()+exec, which runs no fork handlers, so `conveyor
run` can serve on uvloop like the pods' processes do. Its output is read on the loop (`connect_read_pipe`) and its
exit is seen through a pidfd on the loop (Linux), else by a thread that waits for it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from collections.abc import Mapping, Sequence

__all__ = ["SpawnedProcess", "spawn"]


class _Output(asyncio.StreamReaderProtocol):
    """Feeds the child's output to a StreamReader and closes the pipe at its end (uvloop's pipe transport does not
    close itself, and an open one makes the loop's close fail)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.pipe = transport
        super().connection_made(transport)

    def eof_received(self) -> bool:
        super().eof_received()
        self.pipe.close()
        return False


class SpawnedProcess:
    """What the runner uses of a child: its pid, its merged stdout/stderr as a stream, its exit, and signals."""

    def __init__(
        self, popen: subprocess.Popen[bytes], stdout: asyncio.StreamReader, pipe: asyncio.BaseTransport, exited: asyncio.Future[int]
    ) -> None:
        self._popen = popen
        self.stdout = stdout
        self._pipe = pipe
        self._exited = exited

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the exit was seen on the loop (None while running)."""
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, signum: int) -> None:
        if not self._exited.done():
            self._popen.send_signal(signum)

    def kill(self) -> None:
        if not self._exited.done():
            self._popen.kill()

    def close(self) -> None:
        """Stop reading its output (done by itself at the output's end; needed where something else still holds the
        pipe open, e.g. a process the child started)."""
        self._pipe.close()


async def spawn(argv: Sequence[str], *, cwd: str, env: Mapping[str, str]) -> SpawnedProcess:
    """Start `argv` in a session of its own (a terminal's Ctrl-C reaches only the runner), stdin closed, stdout and
    stderr merged into one pipe."""
    loop = asyncio.get_running_loop()
    # Popen returns once the child has exec'd (vfork): as quick as the loop's own subprocess_exec, which calls it too
    popen = subprocess.Popen(  # noqa: ASYNC220
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=dict(env),
        start_new_session=True,
    )
    assert popen.stdout is not None
    reader = asyncio.StreamReader(loop=loop)
    pipe, _ = await loop.connect_read_pipe(lambda: _Output(reader, loop=loop), popen.stdout)
    exited: asyncio.Future[int] = loop.create_future()
    _watch_exit(loop, popen, exited)
    return SpawnedProcess(popen, reader, pipe, exited)


def _watch_exit(loop: asyncio.AbstractEventLoop, popen: subprocess.Popen[bytes], exited: asyncio.Future[int]) -> None:
    def settle(code: int) -> None:
        if not exited.done():
            exited.set_result(code)

    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        try:
            pidfd = pidfd_open(popen.pid)
        except OSError:
            pidfd = None
        if pidfd is not None:
            def readable() -> None:
                loop.remove_reader(pidfd)
                os.close(pidfd)
                settle(popen.wait())  # it has exited: this reaps it at once

            loop.add_reader(pidfd, readable)
            return

    def wait_in_thread() -> None:
        code = popen.wait()
        loop.call_soon_threadsafe(settle, code)

    threading.Thread(target=wait_in_thread, name=f"wait-{popen.pid}", daemon=True).start()
