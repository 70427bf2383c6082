"""Plan-tiered rate limits: admission against a shared store (Redis) or a process-local one.

Entry points: `limiter.Limiter` (admit/settle), `redis_backend.RedisBackend` and
`memory.MemoryBackend` (stores), `admission.Admission` (decision, headers, 429 error).
Nothing is re-exported here, so `glmserve.router.tenants` can import `limits.model` without a cycle.
"""
