"""Who may send what: tenants and their plans, plan-tiered rate limits against a shared store
(Redis) or a process-local one, prefix-cache salts, 429 headers, engine slots by priority.

Entry points: `tenants.Tenants` (API keys to tenants), `limiter.Limiter` (admit/settle),
`redis_backend.RedisBackend` and `memory.MemoryBackend` (stores), `outcome.Admission` (decision,
headers, 429 error), `cache_salt.CacheSalter`. No gRPC, Ray or vLLM: the router runs it, and the
ingress runs it directly when no router answers. Nothing is re-exported here, so
`admission.tenants` can import `admission.model` without a cycle.
"""
