"""Where a model or an op's file may come from: the URI forms `model.uri` (and op config values) accept.

Only the grammar lives here (the spec checks it at load time); `conveyor_runtime.sources` fetches.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["LOCAL_SCHEMES", "REMOTE_SCHEMES", "URI_FORMS", "is_remote_uri", "uri_problem", "uri_scheme"]

#: Fetched into the cache: object stores (the store library's schemes) and plain HTTP(S).
REMOTE_SCHEMES: tuple[str, ...] = ("s3", "gs", "az", "abfs", "abfss", "http", "https")
#: Read where they are: a local file, or a claim the operator mounts (`pvc://<claim>/<path>`).
LOCAL_SCHEMES: tuple[str, ...] = ("file", "pvc")
#: The accepted forms, in words, for error messages.
URI_FORMS = "a path, file://PATH, http(s)://HOST/PATH, s3://BUCKET/KEY, gs://BUCKET/KEY, az://CONTAINER/PATH or pvc://CLAIM/PATH"

_DNS1123_SUBDOMAIN_PART = "abcdefghijklmnopqrstuvwxyz0123456789-."


def uri_scheme(uri: str) -> str:
    """The URI's scheme in lower case, or "" for a plain path."""
    scheme, sep, _ = uri.partition("://")
    return scheme.lower() if sep and scheme.isascii() and scheme.replace("+", "").isalnum() else ""


def is_remote_uri(value: object) -> bool:
    """Whether `value` is a string naming a file to download (an object store or HTTP(S) URL)."""
    return isinstance(value, str) and uri_scheme(value) in REMOTE_SCHEMES


def uri_problem(uri: str) -> str | None:
    """What is wrong with `uri` in words, or None when it is one of the accepted forms."""
    if not uri.strip():
        return f"must not be empty; give {URI_FORMS}"
    scheme = uri_scheme(uri)
    if not scheme:
        return None if "://" not in uri else f"{uri!r} has no scheme before '://'; give {URI_FORMS}"
    if scheme not in REMOTE_SCHEMES + LOCAL_SCHEMES:
        return f"scheme {scheme!r} is not supported; give {URI_FORMS}"
    rest = uri.split("://", 1)[1]
    if scheme == "file":
        return None if rest else "file:// needs a path, e.g. file:///models/resnet.onnx"
    parts = urlsplit(uri)
    if parts.query or parts.fragment:
        return f"{uri!r}: a query string or fragment is not supported; give the object's plain URL"
    host, _, path = rest.partition("/")
    if not host:
        return f"{uri!r} names no {'claim' if scheme == 'pvc' else 'host' if scheme.startswith('http') else 'bucket'}"
    if not path or path.endswith("/"):
        return f"{uri!r} must name a file, e.g. {scheme}://{host}/model.onnx"
    if scheme == "pvc":
        if not set(host) <= set(_DNS1123_SUBDOMAIN_PART) or host[0] in "-." or host[-1] in "-.":
            return f"{uri!r}: the claim {host!r} is not a valid PersistentVolumeClaim name (a DNS-1123 subdomain)"
        if ".." in path.split("/"):
            return f"{uri!r}: '..' may not appear in the path inside the claim"
    return None
