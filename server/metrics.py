"""The gate's Prometheus metrics, in a registry of its own (one per app, so tests stay independent)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.decisions = Counter("plangate_decisions", "Decisions by endpoint and reason.",
                                 ["endpoint", "reason"], registry=r)
        self.denials = Counter("plangate_denials", "Denied decisions by reason.", ["reason"], registry=r)
        self.usage = Counter("plangate_usage_counted", "Units counted, by meter.", ["meter"], registry=r)
        self.fail_mode = Counter("plangate_fail_mode_answers",
                                 "Answers given by a fail mode because the store could not be read.",
                                 ["mode"], registry=r)
        self.store_errors = Counter("plangate_store_errors", "Store failures and timeouts, by operation.",
                                    ["operation"], registry=r)
        self.cache = Counter("plangate_cache_lookups", "Subject cache lookups by result.", ["result"], registry=r)
        self.cache_ratio = Gauge("plangate_cache_hit_ratio", "Share of subject lookups answered by the cache.",
                                 registry=r)
        self.cache_ratio.set_function(self._hit_ratio)
        self.transitions = Counter("plangate_transitions", "Committed status changes.",
                                   ["trigger_kind", "to"], registry=r)
        self.latency = Histogram("plangate_request_seconds", "Request handling time by route.", ["route"],
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5),
                                 registry=r)
        self.webhooks = Counter("plangate_webhooks", "Stripe webhook deliveries by outcome (or refusal).",
                                ["outcome"], registry=r)
        self.jobs = Counter("plangate_job_runs", "Job runs by job and result.", ["job", "result"], registry=r)
        self.rejected = Counter("plangate_rejected_requests", "Requests refused before any work (4xx) by error.",
                                ["error"], registry=r)

    def _hit_ratio(self) -> float:
        hits = self.cache.labels("hit")._value.get()
        misses = self.cache.labels("miss")._value.get()
        return hits / (hits + misses) if hits + misses else 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)
