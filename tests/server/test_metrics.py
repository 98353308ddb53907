"""The metrics the gate keeps on its event loop, as prometheus-client's parser reads them from /metrics."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from plangate.server.metrics import Metrics


def samples(metrics: Metrics) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics.render().decode()) for s in family.samples}


def test_counters_by_label_values():
    m = Metrics()
    m.decisions.labels("check", "ok").inc()
    m.decisions.labels("check", "ok").inc()
    m.decisions.labels("consume", "quota_exhausted").inc()
    m.usage.labels("requests").inc(7)
    found = samples(m)
    assert found[("plangate_decisions_total", (("endpoint", "check"), ("reason", "ok")))] == 2
    assert found[("plangate_decisions_total", (("endpoint", "consume"), ("reason", "quota_exhausted")))] == 1
    assert found[("plangate_usage_counted_total", (("meter", "requests"),))] == 7


def test_latency_buckets_are_cumulative_and_a_bound_holds_its_own_value():
    m = Metrics()
    for seconds in (0.0001, 0.0005, 0.003, 7.0):
        m.latency.labels("/v1/check").observe(seconds)
    found = samples(m)

    def bucket(le: str) -> float:
        return found[("plangate_request_seconds_bucket", (("le", le), ("route", "/v1/check")))]

    assert (bucket("0.0005"), bucket("0.001"), bucket("0.005"), bucket("2.5"), bucket("+Inf")) == (2, 2, 3, 3, 4)
    assert found[("plangate_request_seconds_count", (("route", "/v1/check"),))] == 4
    assert found[("plangate_request_seconds_sum", (("route", "/v1/check"),))] == pytest.approx(7.0036)


def test_cache_hit_ratio_and_label_count():
    m = Metrics()
    assert samples(m)[("plangate_cache_hit_ratio", ())] == 0.0
    for result in ("hit", "hit", "hit", "miss"):
        m.cache.labels(result).inc()
    assert samples(m)[("plangate_cache_hit_ratio", ())] == 0.75
    with pytest.raises(ValueError):
        m.decisions.labels("check")
