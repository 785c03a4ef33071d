"""Why a source could not be made a local file: `FetchError` names the URI and the reason in a few words."""

from __future__ import annotations

from ..errors import ModelLoadError

__all__ = ["DigestMismatch", "FetchError"]


class FetchError(ModelLoadError):
    """Raised when a model or op file cannot be fetched or found; ``str()`` is ``<uri>: <reason>``."""

    def __init__(self, uri: str, reason: str) -> None:
        self.uri = uri
        self.reason = reason
        super().__init__(f"{uri}: {reason}")


class DigestMismatch(FetchError):
    """Raised when a fetched file's sha256 is not the one the spec names; the file is not kept."""

    def __init__(self, uri: str, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            uri,
            f"sha256 mismatch: the spec says {expected}, the download has {actual}; fix `sha256` or the object",
        )
