"""Routing benchmarks: `python -m benchmarks.routing` (add --quick for a smaller run).

quality.py  the same seeded agentic workload through a simulated cluster under each policy:
            prefix-cache hit rate and TTFT (precise vs approximate vs round-robin vs oracle).
latency.py  the real router process over gRPC with 64 workers' worth of KV index, fed by ZMQ
            events: Route latency for 8K-token prompts at a fixed request rate, and throughput.
Results go to benchmarks/results/routing.{json,md,png}.
"""
