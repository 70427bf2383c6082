"""The service-level objectives that the dashboards draw and the alerts defend.

Both are ratios of good to all requests over 30 days, so their error budgets burn the same
way and one multi-window burn-rate scheme (Google's SRE workbook, chapter 5) alerts on both.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.utils import floatToGoString

WINDOW = "30d"


@dataclass(frozen=True, slots=True)
class Objective:
    name: str
    target: float  # share of requests that must be good

    @property
    def budget(self) -> float:
        return 1 - self.target


# Good: the ingress answered without a 5xx. 4xx are the client's (or its plan's) doing.
AVAILABILITY = Objective("availability", 0.995)
# Good: the first token left the ingress within TTFT_THRESHOLD_S, which must be a bucket bound of
# metrics.INGRESS_TTFT for the share to be measurable.
TTFT = Objective("time to first token", 0.95)
TTFT_THRESHOLD_S = 2.5
# The `le` label of that bucket, spelled as prometheus_client writes it.
TTFT_BUCKET = floatToGoString(TTFT_THRESHOLD_S)


@dataclass(frozen=True, slots=True)
class BurnWindow:
    """Alert when the budget burns `rate` times too fast over both windows: the long one proves
    it matters, the short one that it is still happening (so the alert stops soon after it does)."""

    long: str
    short: str
    rate: float
    severity: str
    for_: str


BURN_WINDOWS = (
    BurnWindow("1h", "5m", 14.4, "critical", "2m"),  # 2% of a 30-day budget in one hour
    BurnWindow("6h", "30m", 6.0, "critical", "15m"),  # 5% in six hours
    BurnWindow("3d", "6h", 1.0, "warning", "1h"),  # 10% in three days
)
