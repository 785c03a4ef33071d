"""Why a step stopped, written where Kubernetes shows it: the container's termination message.

The kubelet mounts an empty file at the container's `terminationMessagePath` (by default
/dev/termination-log) and, once the container exits, puts its content in the pod's
`status.containerStatuses[].state.terminated.message` (later `lastState`), where the operator reads it.
Outside a pod the default file does not exist and nothing is written.
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["TERMINATION_LOG", "TERMINATION_MESSAGE_LIMIT", "termination_message", "write_termination_message"]

log = logging.getLogger(__name__)

#: Kubernetes' default `terminationMessagePath`.
TERMINATION_LOG = Path("/dev/termination-log")
#: The kubelet keeps at most this many bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096


def termination_message(error: BaseException) -> str:
    """``Kind: message`` (as `conveyor` prints it), clipped to what the kubelet keeps."""
    text = f"{type(error).__name__}: {error}"
    data = text.encode()
    if len(data) <= TERMINATION_MESSAGE_LIMIT:
        return text
    return data[: TERMINATION_MESSAGE_LIMIT - 3].decode(errors="ignore") + "..."


def write_termination_message(error: BaseException, path: Path | None = None) -> bool:
    """Write why the step stopped to `path` (None: /dev/termination-log, only if the kubelet made it).

    Returns whether it was written; a file that cannot be written is logged, never raised over `error`.
    """
    if path is None:
        if not TERMINATION_LOG.is_file():
            return False
        path = TERMINATION_LOG
    try:
        path.write_text(termination_message(error))
    except OSError as exc:
        log.warning("cannot write the termination message to %s (%s)", path, exc)
        return False
    return True
