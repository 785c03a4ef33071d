"""Fetch `/metrics` pages over HTTP, several at once, with a short timeout: a pod that does not answer is left out."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from .samples import PodSample, parse_metrics

__all__ = ["SCRAPE_TIMEOUT_S", "fetch_samples"]

log = logging.getLogger(__name__)

#: Seconds to wait for one `/metrics` page.
SCRAPE_TIMEOUT_S = 2.0
_PARALLEL = 8


def _fetch(url: str, timeout: float) -> PodSample | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return parse_metrics(response.read().decode())
    except (OSError, ValueError) as exc:
        log.debug("cannot scrape %s: %s", url, exc)
        return None


def fetch_samples(urls: Mapping[str, str], *, timeout: float = SCRAPE_TIMEOUT_S) -> dict[str, PodSample]:
    """Each key's parsed `/metrics` page (e.g. pod name -> ``http://10.0.0.7:9090/metrics``); keys whose page could
    not be read are absent (blocking: call from a thread)."""
    if not urls:
        return {}
    with ThreadPoolExecutor(min(_PARALLEL, len(urls)), thread_name_prefix="conveyor-scrape") as pool:
        results = dict(zip(urls, pool.map(lambda url: _fetch(url, timeout), urls.values())))
    return {key: sample for key, sample in results.items() if sample is not None}
