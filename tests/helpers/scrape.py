"""Reading a stack's Prometheus expositions: the ingress's, its router's, and Ray's (the engines')."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def total(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples in an exposition whose labels include `labels`."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def scraped(url: str, name: str, **labels: str) -> float:
    return total(httpx.get(url, timeout=10).text, name, **labels)
