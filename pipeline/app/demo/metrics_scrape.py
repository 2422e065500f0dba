"""Read the roles' Prometheus endpoints: the demo's and `status`'s live view of each process."""

from __future__ import annotations

import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families


def _exposition(port: int, timeout: float) -> str | None:
    """The role's /metrics text; None when it is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


def scrape(port: int, *, timeout: float = 1.0) -> dict[str, float]:
    """Sum every sample of each series name (labels folded); {} when the role is not up."""
    text = _exposition(port, timeout)
    if text is None:
        return {}
    totals: dict[str, float] = defaultdict(float)
    maxima: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] += sample.value
            maxima[sample.name] = max(maxima.get(sample.name, sample.value), sample.value)
    out = dict(totals)
    out.update({f"max:{k}": v for k, v in maxima.items()})
    return out


def merged(samples: list[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = defaultdict(float)
    for sample in samples:
        for key, value in sample.items():
            if key.startswith("max:"):
                total[key] = max(total[key], value)
            else:
                total[key] += value
    return dict(total)


def histogram_buckets(ports: list[int], name: str, *, timeout: float = 1.0) -> dict[float, float]:
    """Cumulative bucket counts (upper bound → count) of histogram ``name``, summed over the
    roles at ``ports``; {} when none exposes it."""
    out: dict[float, float] = defaultdict(float)
    for port in ports:
        text = _exposition(port, timeout)
        if text is None:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == f"{name}_bucket":
                    out[float(sample.labels["le"])] += sample.value
    return dict(out)


def bucket_quantile(buckets: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated linearly inside its bucket (as
    PromQL's histogram_quantile does); None when empty. Above the last finite bound: that bound."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            span = count - below
            return lower + (bound - lower) * ((rank - below) / span if span else 0.0)
        lower, below = bound, count
    return lower
