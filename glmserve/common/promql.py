"""PromQL over the metrics of glmserve.common.metrics, for the dashboards and the alerts alike.

A `Query` is bound to a scope: the label matchers every selector carries (Grafana variables on a
dashboard, one ModelDeployment's namespace and name in its alerting rules).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from glmserve.common.metrics import SERVE_REPLICA_HEALTHY, MetricSpec

# The target label the chart's monitors (and nothing locally) give every series of one ModelDeployment.
MODEL_DEPLOYMENT = "model_deployment"
RATE_WINDOW = "5m"
# Ray Serve deployment names of the engine pools (glmserve.serving.topology.DEPLOYMENT_PREFIX).
POOL_DEPLOYMENTS = "(Engine|Prefill|Decode):.*"
ENGINE_DEPLOYMENTS = f'deployment=~"{POOL_DEPLOYMENTS}"'

Scope = Callable[[MetricSpec], str]


def by(labels: Sequence[str]) -> str:
    return f" by ({', '.join(labels)})" if labels else ""


def pool_label(expr: str) -> str:
    """`expr`, a series of Ray Serve's engine deployments, labelled `pool` (Engine: colocated, Prefill
    or Decode) from its `deployment`."""
    return f'label_replace({expr}, "pool", "$1", "deployment", "([A-Za-z]+):.*")'


def share(part: str, whole: str) -> str:
    """`part / whole`, reading 0 where `part` has no series yet (counters appear once they move)."""
    return f"({part} or 0 * {whole}) / {whole}"


class Query:
    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    def series(self, spec: MetricSpec, *matchers: str, suffix: str = "") -> str:
        """`spec`'s series (`suffix`: _bucket, _sum or _count of a histogram) in scope."""
        labels = ",".join(m for m in (self._scope(spec), *matchers) if m)
        return f"{spec.name}{suffix}{{{labels}}}"

    def rate(self, spec: MetricSpec, *matchers: str, suffix: str = "", window: str = RATE_WINDOW) -> str:
        return f"rate({self.series(spec, *matchers, suffix=suffix)}[{window}])"

    def sum_rate(
        self, spec: MetricSpec, labels: Sequence[str] = (), *matchers: str, suffix: str = "", window: str = RATE_WINDOW
    ) -> str:
        return f"sum{by(labels)} ({self.rate(spec, *matchers, suffix=suffix, window=window)})"

    def quantile(self, q: float, spec: MetricSpec, labels: Sequence[str] = (), *matchers: str) -> str:
        """The q-quantile of a histogram over the rate window, per `labels`."""
        return f"histogram_quantile({q}, sum{by(('le', *labels))} ({self.rate(spec, *matchers, suffix='_bucket')}))"

    # -- engines: vLLM names the Serve replica (ReplicaId) but not its pool ---------------------

    def engine_replicas(self) -> str:
        """Ray Serve's health (1 or 0) of each engine replica, labelled `pool` (Engine: colocated,
        Prefill or Decode, from the replica's deployment) and `ReplicaId` (vLLM's label for it)."""
        healthy = self.series(SERVE_REPLICA_HEALTHY, ENGINE_DEPLOYMENTS)
        return pool_label(f'label_replace({healthy}, "ReplicaId", "$1", "replica", "(.+)")')

    def serve_pools(self, spec: MetricSpec, suffix: str = "") -> str:
        """A Ray Serve series of the engine deployments, labelled `pool`."""
        return pool_label(self.series(spec, ENGINE_DEPLOYMENTS, suffix=suffix))

    def pools(self) -> str:
        """One series per engine replica, value 1, labelled ReplicaId and pool."""
        return f"group by (ReplicaId, pool) ({self.engine_replicas()})"

    def pooled(self, expr: str) -> str:
        """Engine series `expr` with a `pool` label."""
        return f"({expr}) * on (ReplicaId) group_left (pool) {self.pools()}"

    def pool_rate(self, spec: MetricSpec, labels: Sequence[str], *matchers: str, suffix: str = "") -> str:
        """Per-second rate of an engine counter summed by `labels`, which may name `pool`."""
        return f"sum{by(labels)} ({self.pooled(self.rate(spec, *matchers, suffix=suffix))})"

    def pool_quantile(self, q: float, spec: MetricSpec, labels: Sequence[str], *matchers: str) -> str:
        rate = self.pooled(self.rate(spec, *matchers, suffix="_bucket"))
        return f"histogram_quantile({q}, sum{by(('le', *labels))} ({rate}))"
