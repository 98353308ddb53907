"""The gate's Prometheus metrics, in a registry of its own (one per app, so tests stay independent).

Every update comes from the event loop's thread (the store's threads update none), so the values are plain
numbers, handed to prometheus-client as metric families when /metrics is scraped: its own metrics lock on
every update and look their children up each time, a cost every check would pay.
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5)


class _Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class _Observed:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)     # per bucket (not cumulative), the last for +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1     # a bucket holds values up to its bound
        self.sum += value


class _Labelled:
    """A counter (or histogram) by label values: labels(*values) is the child to inc() (or observe())."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], child=_Count) -> None:
        self.name, self.documentation, self.labelnames, self._child = name, documentation, labelnames, child
        self._children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str):
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, not {values}")
            child = self._children[values] = self._child()
        return child

    def counts(self) -> dict[tuple[str, ...], float]:
        """Each label values' count so far (a counter's; the console's health page)."""
        return {values: child.value for values, child in self._children.items() if isinstance(child, _Count)}

    def family(self):
        if self._child is _Observed:
            family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
            for values, child in self._children.items():
                cumulative, buckets = 0, []
                for bound, count in zip((*map(floatToGoString, LATENCY_BUCKETS), "+Inf"), child.counts):
                    cumulative += count
                    buckets.append((bound, cumulative))
                family.add_metric([str(v) for v in values], buckets, child.sum)
            return family
        counter = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            counter.add_metric([str(v) for v in values], child.value)
        return counter


class Metrics:
    def __init__(self) -> None:
        self.decisions = _Labelled("plangate_decisions", "Decisions by endpoint and reason.", ("endpoint", "reason"))
        self.denials = _Labelled("plangate_denials", "Denied decisions by reason.", ("reason",))
        self.usage = _Labelled("plangate_usage_counted", "Units counted, by meter.", ("meter",))
        self.fail_mode = _Labelled("plangate_fail_mode_answers",
                                   "Answers given by a fail mode because the store could not be read.", ("mode",))
        self.store_errors = _Labelled("plangate_store_errors", "Store failures and timeouts, by operation.",
                                      ("operation",))
        self.cache = _Labelled("plangate_cache_lookups", "Subject cache lookups by result.", ("result",))
        self.transitions = _Labelled("plangate_transitions", "Committed status changes.", ("trigger_kind", "to"))
        self.latency = _Labelled("plangate_request_seconds", "Request handling time by route.", ("route",),
                                 child=_Observed)
        self.webhooks = _Labelled("plangate_webhooks", "Stripe webhook deliveries by outcome (or refusal).",
                                  ("outcome",))
        self.jobs = _Labelled("plangate_job_runs", "Job runs by job and result.", ("job", "result"))
        self.rejected = _Labelled("plangate_rejected_requests", "Requests refused before any work (4xx) by error.",
                                  ("error",))
        self.sweep_failures = _Labelled("plangate_sweep_subject_failures",
                                        "Subjects a sweep could not move (left for the next sweep), by stage.",
                                        ("stage",))
        self.plan_reloads = _Labelled("plangate_plan_reloads", "Plan reloads by result (applied, unchanged, "
                                      "refused, followed: another node's deploy).", ("result",))
        self.plan_moved = _Labelled("plangate_plan_moved_subjects", "Stored subjects moved by plan changes (renamed "
                                    "or retired names, upgrades).", ("kind",))
        self.overage = _Labelled("plangate_overage_counted", "Units of work counted as overage, by meter.", ("meter",))
        self.overage_reports = _Labelled("plangate_overage_reports", "Overage reports sent to Stripe, by result "
                                         "(sent, retry, refused).", ("result",))
        self.adopted_late = _Labelled("plangate_events_adopted_late", "Pending Stripe events adopted after the "
                                      "delivery that linked them had failed to, by what adopted them (redelivery: "
                                      "a repeat delivery; sweep).", ("by",))
        self.unknown_state = _Count()
        self.cache_refreshes = _Count()     # entries read again ahead of their expiry (Gate.refresh_ahead)
        self.cache_renewals = _Count()      # ... kept unread instead: nothing outside the gate wrote since
        self.plan_version = ""          # set by the plan keeper: the version this node decides with
        self._labelled = (self.decisions, self.denials, self.usage, self.fail_mode, self.store_errors, self.cache,
                          self.transitions, self.latency, self.webhooks, self.jobs, self.rejected,
                          self.sweep_failures, self.plan_reloads, self.plan_moved, self.overage, self.overage_reports,
                          self.adopted_late)
        # () -> {replica: seconds}: the store's measured replica lags (none by default)
        self.replica_lags: Callable[[], dict[str, float]] = dict
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def collect(self):
        """prometheus-client's collector protocol: every metric as it is now."""
        for metric in self._labelled:
            yield metric.family()
        yield GaugeMetricFamily("plangate_cache_hit_ratio", "Share of subject lookups answered by the cache.",
                                value=self._hit_ratio())
        refreshes = CounterMetricFamily("plangate_cache_refreshes", "Cached subjects read again before they "
                                        "expired, because requests kept asking for them.")
        refreshes.add_metric([], self.cache_refreshes.value)
        yield refreshes
        renewals = CounterMetricFamily("plangate_cache_renewals", "Cached subjects kept another TTL without a "
                                       "reading: nothing but the gate itself wrote the store since they were read.")
        renewals.add_metric([], self.cache_renewals.value)
        yield renewals
        unknown = CounterMetricFamily("plangate_unknown_state", "Stored subjects whose status this node's plan "
                                      "neither has nor maps (answered by the fail mode, never decided).")
        unknown.add_metric([], self.unknown_state.value)
        yield unknown
        info = GaugeMetricFamily("plangate_plan_info", "The plan version this node decides with (value 1).",
                                 labels=("version",))
        info.add_metric([self.plan_version], 1)
        yield info
        lags = self.replica_lags()
        if lags:
            family = GaugeMetricFamily("plangate_replica_lag_seconds", "How stale a read from each PostgreSQL "
                                       "replica can be, as last measured (+Inf: not known to be current).",
                                       labels=("replica",))
            for replica, lag in lags.items():
                family.add_metric([replica], lag)
            yield family

    def _hit_ratio(self) -> float:
        hits, misses = self.cache.labels("hit").value, self.cache.labels("miss").value
        return hits / (hits + misses) if hits + misses else 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)
