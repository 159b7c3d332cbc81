"""Prometheus metrics of a gateway, through the maintained ``prometheus_client``.

Per request (counted by :class:`~chunkyard.server.observe.Observe`): requests and
latency by route template (never the raw path: names would explode the label set),
bytes in and out of the gateway itself (pack bytes go straight to the store and are not
in them), store errors by operation. From the catalog, read at most every
:data:`TOTALS_TTL` seconds at scrape time: logical and stored bytes (and their ratio,
the dedup ratio), open sessions, the verification backlog. All catalog-wide, so equal
on every gateway of a repository: sum the per-request ones, not these.

With several worker processes (``serve --workers N``) ``serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a directory of its own before the workers start, and a
scrape of any worker reports the sum over all of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..repository import Repository, status

#: seconds the catalog totals are reused: they sum every version and pack
TOTALS_TTL = 30.0
PREFIX = "chunkyard_"

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter(
    PREFIX + "http_requests",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    PREFIX + "http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by route template",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
RECEIVED = Counter(
    PREFIX + "http_received_bytes", "Request body bytes the gateway received", registry=REGISTRY
)
SENT = Counter(PREFIX + "http_sent_bytes", "Answer body bytes the gateway sent", registry=REGISTRY)
STORE_ERRORS = Counter(
    PREFIX + "store_errors",
    "Requests that failed on an error of the store, by store operation",
    ["operation"],
    registry=REGISTRY,
)


def observe(
    route: str, method: str, status_code: int, seconds: float, bytes_in: int, bytes_out: int
) -> None:
    REQUESTS.labels(route, method, str(status_code)).inc()
    LATENCY.labels(route, method).observe(seconds)
    if bytes_in:
        RECEIVED.inc(bytes_in)
    if bytes_out:
        SENT.inc(bytes_out)


def store_error(operation: str) -> None:
    STORE_ERRORS.labels(operation or "unknown").inc()


class CatalogTotals(Collector):
    """Gauges read from the catalog when scraped (see :meth:`refresh`)."""

    def __init__(self) -> None:
        self.totals = status.Totals()

    async def refresh(self, repo: Repository) -> None:
        if self.totals.at == 0 or time.monotonic() - self.totals.at >= TOTALS_TTL:
            self.totals = await status.totals(repo)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        t = self.totals
        yield GaugeMetricFamily(
            PREFIX + "logical_bytes", "Bytes of every stored version, as pulled", t.logical_bytes
        )
        yield GaugeMetricFamily(
            PREFIX + "stored_bytes", "Bytes of the verified packs in the store", t.stored_bytes
        )
        ratio = t.logical_bytes / t.stored_bytes if t.stored_bytes else 1.0
        yield GaugeMetricFamily(
            PREFIX + "dedup_ratio", "Logical bytes over stored bytes (1: no dedup)", ratio
        )
        yield GaugeMetricFamily(
            PREFIX + "sessions_open", "Upload sessions open and not expired", t.sessions_open
        )
        yield GaugeMetricFamily(
            PREFIX + "verification_backlog_packs",
            "Packs uploaded and not yet verified",
            t.verification_backlog,
        )


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render(catalog: CatalogTotals) -> tuple[bytes, str]:
    """The exposition text and its content type."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    text = generate_latest(registry) + generate_latest(_Single(catalog))
    return text, CONTENT_TYPE_LATEST


class _Single(CollectorRegistry):
    """A registry of one collector, rendered after the per-request ones."""

    def __init__(self, collector: Any) -> None:
        super().__init__(auto_describe=False)
        self.register(collector)
