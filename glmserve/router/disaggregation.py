"""The P/D decider (llm-d's pd-profile-handler): after the decode worker is chosen, prefill on a
prefill worker only when enough of the prompt is uncached on the decode worker to be worth a KV
transfer; otherwise, or when no prefill worker can take it, the decode worker prefills locally."""

from __future__ import annotations

from glmserve.router.pipeline import Pick, Profile, Rejected
from glmserve.router.plugins.base import RouteContext
from glmserve.router.workers import Worker


class Disaggregation:
    def __init__(self, prefill: Profile, min_remote_prefill_tokens: int) -> None:
        self._prefill = prefill
        self._threshold = min_remote_prefill_tokens

    def prefill_for(self, ctx: RouteContext, decode: Pick, workers: list[Worker]) -> tuple[Pick | None, str]:
        """The prefill worker (None: prefill locally on the decode worker) and why."""
        uncached = len(ctx.query.tokens) - ctx.cached_tokens([decode.worker])[0]
        if not ctx.registry.group(ctx.query.model, "prefill").workers:
            return None, "local prefill: no prefill pool"
        if uncached < self._threshold:
            return None, f"local prefill: {uncached} uncached tokens < {self._threshold}"
        pick = self._prefill.run(ctx, workers)
        if isinstance(pick, Rejected):
            return None, f"local prefill: no prefill worker ({pick.stage} filter left none of {pick.before})"
        return pick, f"remote prefill: {uncached} uncached tokens on decode; prefill {pick.explain()}"
