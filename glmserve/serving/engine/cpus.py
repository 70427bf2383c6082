"""Which CPU cores each engine rank may use when several CPU engines share one machine.

vLLM's CPU backend binds an OpenMP thread per core and lets idle threads spin. Two engines
left on vLLM's default binding both claim every core and spin against each other: measured
here, a prefill and a decode engine sharing 2 cores took ~200 ms per decoded token instead
of ~10 ms. Giving every rank of every replica disjoint cores removes the contention.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PoolRanks:
    name: str
    replicas: int
    tensor_parallel: int


def _spans(cores: list[int]) -> str:
    return f"{cores[0]}-{cores[-1]}" if len(cores) > 1 else str(cores[0])


def assign_cores(pools: list[PoolRanks], num_cores: int) -> dict[str, list[str]]:
    """vLLM `VLLM_CPU_OMP_THREADS_BIND` values per replica of each pool ("0-1|2-3" = rank 0 on
    cores 0-1, rank 1 on 2-3); an empty list leaves a pool on vLLM's default binding.

    Cores are split evenly over all ranks (a pool's replicas are started at once, so each
    replica gets its own share). With more ranks than cores each rank gets one core, dealt
    round-robin: ranks sharing a core only compete while both compute, whereas ranks on every
    core spin against each other all the time. A single rank keeps vLLM's default.
    """
    ranks = sum(p.replicas * p.tensor_parallel for p in pools)
    if ranks < 2:
        return {p.name: [] for p in pools}
    per_rank = max(1, num_cores // ranks)
    next_core = 0
    plan: dict[str, list[str]] = {}
    for pool in pools:
        binds = []
        for _ in range(pool.replicas):
            rank_binds = []
            for _ in range(pool.tensor_parallel):
                cores = [(next_core + i) % num_cores for i in range(per_rank)]
                rank_binds.append(_spans(cores))
                next_core += per_rank
            binds.append("|".join(rank_binds))
        plan[pool.name] = binds
    return plan
