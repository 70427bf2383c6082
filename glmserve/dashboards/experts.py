"""Expert-parallel load: whether the replicas of a pool (each one expert-parallel group) share the work.

vLLM 0.32 exports no per-expert or per-rank token counts (its EPLB only logs them), so this
dashboard compares the groups: each replica's throughput, the pool's imbalance between them,
and the tokens per engine step that set how full each expert's GEMM runs.
"""

from __future__ import annotations

from glmserve.common import metrics as m
from glmserve.dashboards.grafana import Dashboard, Panel, Q, Target

_REPLICA = ("pool", "ReplicaId")
_REPLICA_LEGEND = "{{pool}} {{ReplicaId}}"
_GENERATED = Q.pool_rate(m.VLLM_GENERATION_TOKENS, _REPLICA)
_COMPUTED = Q.pool_rate(m.VLLM_PROMPT_TOKENS_BY_SOURCE, _REPLICA, 'source="local_compute"')

DASHBOARD = Dashboard(
    uid="glmserve-experts",
    title="glmserve: expert-parallel load",
    description="Load per engine replica (one expert-parallel group each) and its balance within each pool.",
    panels=(
        Panel(
            "Generated tokens per second by replica",
            "Decode work each expert-parallel group does.",
            "short",
            (Target(_GENERATED, _REPLICA_LEGEND),),
        ),
        Panel(
            "Computed prompt tokens per second by replica",
            "Prefill work each group does (prompt tokens neither cached nor transferred).",
            "short",
            (Target(_COMPUTED, _REPLICA_LEGEND),),
        ),
        Panel(
            "Load imbalance by pool",
            "Busiest replica's generated tokens over the pool's mean: 1 is balanced; the pool runs at the pace "
            "of its busiest group.",
            "x",
            (Target(f"max by (pool) ({_GENERATED}) / avg by (pool) ({_GENERATED})", "{{pool}}"),),
            (("green", None), ("orange", 1.25), ("red", 1.5)),
        ),
        Panel(
            "Tokens per engine step by pool",
            "Prompt and generated tokens batched into one forward pass; with top-k routing each expert sees "
            "about tokens x k / experts of them.",
            "short",
            tuple(
                Target(Q.pool_quantile(q, m.VLLM_ITERATION_TOKENS, ("pool",)), f"p{q * 100:g} {{{{pool}}}}")
                for q in (0.5, 0.95)
            ),
        ),
        Panel(
            "Running requests by replica",
            "Batch occupancy of each group.",
            "short",
            (Target(f"sum by (pool, ReplicaId) ({Q.pooled(Q.series(m.VLLM_REQUESTS_RUNNING))})", _REPLICA_LEGEND),),
        ),
    ),
)
