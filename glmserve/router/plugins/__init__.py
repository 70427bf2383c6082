"""Routing plugins, llm-d style: filters narrow the candidates, scorers rate each in [0, 1] (summed
with per-profile weights), a picker chooses. Each is registered by name in `registry`."""
