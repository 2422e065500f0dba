"""Read the roles' Prometheus endpoints: the demo's and `status`'s live view of each process."""

from __future__ import annotations

import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int, *, timeout: float = 1.0) -> dict[str, float]:
    """Sum every sample of each series name (labels folded); {} when the role is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
            text = resp.read().decode()
    except OSError:
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
