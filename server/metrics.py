"""The gate's Prometheus metrics, in a registry of its own (one per app, so tests stay independent)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _Children:
    """A labelled metric whose children are looked up once per label values: prometheus_client's
    labels() validates and locks on every call (2-5 us, three times a request)."""

    __slots__ = ("metric", "_children")

    def __init__(self, metric) -> None:
        self.metric = metric
        self._children: dict[tuple, object] = {}

    def labels(self, *values):
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.decisions = _Children(Counter("plangate_decisions", "Decisions by endpoint and reason.",
                                 ["endpoint", "reason"], registry=r))
        self.denials = _Children(Counter("plangate_denials", "Denied decisions by reason.", ["reason"], registry=r))
        self.usage = _Children(Counter("plangate_usage_counted", "Units counted, by meter.", ["meter"], registry=r))
        self.fail_mode = _Children(Counter("plangate_fail_mode_answers",
                                 "Answers given by a fail mode because the store could not be read.",
                                 ["mode"], registry=r))
        self.store_errors = _Children(Counter("plangate_store_errors", "Store failures and timeouts, by operation.",
                                    ["operation"], registry=r))
        self.cache = _Children(Counter("plangate_cache_lookups", "Subject cache lookups by result.", ["result"],
                                       registry=r))
        self.cache_ratio = Gauge("plangate_cache_hit_ratio", "Share of subject lookups answered by the cache.",
                                 registry=r)
        self.cache_ratio.set_function(self._hit_ratio)
        self.transitions = _Children(Counter("plangate_transitions", "Committed status changes.",
                                   ["trigger_kind", "to"], registry=r))
        self.latency = _Children(Histogram("plangate_request_seconds", "Request handling time by route.", ["route"],
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5),
                                 registry=r))
        self.webhooks = _Children(Counter("plangate_webhooks", "Stripe webhook deliveries by outcome (or refusal).",
                                ["outcome"], registry=r))
        self.jobs = _Children(Counter("plangate_job_runs", "Job runs by job and result.", ["job", "result"],
                                      registry=r))
        self.rejected = _Children(Counter("plangate_rejected_requests",
                                          "Requests refused before any work (4xx) by error.", ["error"], registry=r))

    def _hit_ratio(self) -> float:
        hits = self.cache.labels("hit")._value.get()
        misses = self.cache.labels("miss")._value.get()
        return hits / (hits + misses) if hits + misses else 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)
