"""Fetch `/metrics` pages over HTTP, several at once, with a short timeout: a pod that does not answer is left out."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from .samples import PodSample, parse_metrics

__all__ = ["SCRAPE_TIMEOUT_S", "fetch_pages", "fetch_samples"]

log = logging.getLogger(__name__)

#: Seconds to wait for one `/metrics` page.
SCRAPE_TIMEOUT_S = 2.0
_PARALLEL = 8


def _fetch(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text: str = response.read().decode()
            return text
    except (OSError, ValueError) as exc:
        log.debug("cannot scrape %s: %s", url, exc)
        return None


def fetch_pages(urls: Mapping[str, str], *, timeout: float = SCRAPE_TIMEOUT_S) -> dict[str, str]:
    """Each key's `/metrics` page (e.g. pod name -> ``http://10.0.0.7:9090/metrics``), read once; keys whose page
    could not be read are absent (blocking: call from a thread)."""
    if not urls:
        return {}
    with ThreadPoolExecutor(min(_PARALLEL, len(urls)), thread_name_prefix="conveyor-scrape") as pool:
        results = dict(zip(urls, pool.map(lambda url: _fetch(url, timeout), urls.values())))
    return {key: text for key, text in results.items() if text is not None}


def fetch_samples(
    urls: Mapping[str, str], *, timeout: float = SCRAPE_TIMEOUT_S, steps: Mapping[str, str] | None = None
) -> dict[str, PodSample]:
    """Each key's parsed `/metrics` page (see `fetch_pages`); pages that could not be read or parsed are absent.
    ``steps`` names, by key, the one step whose series to read from a page that may hold several (a step's process
    also serves the steps that run in it: see `parse_metrics`)."""
    chosen = steps or {}
    samples: dict[str, PodSample] = {}
    for key, text in fetch_pages(urls, timeout=timeout).items():
        try:
            samples[key] = parse_metrics(text, chosen.get(key))
        except ValueError as exc:
            log.debug("cannot parse the metrics at %s: %s", urls[key], exc)
    return samples
