"""The roles an engine pool plays: the one definition of their names.

A colocated engine prefills and decodes its own requests; with disaggregation a prefill pool
computes prompts' KV and a decode pool receives it and generates. glmserve's router only knows the
pools a request can be sent to: a colocated engine registers with it as a decode worker (it runs
requests to their end), so the router's `WorkerRole` is the subset without "colocated".
"""

from __future__ import annotations

from typing import Literal

WorkerRole = Literal["prefill", "decode"]
Role = Literal[WorkerRole, "colocated"]


def worker_role(role: Role) -> WorkerRole:
    """The router's pool of an engine of `role`."""
    return "decode" if role == "colocated" else role
