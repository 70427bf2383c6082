"""What the controller queues, and what it asks the router about capacity."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Ticket:
    request_id: str
    model: str
    tenant: str
    band: int  # PRIORITY_RANK of the tenant's plan: lower is served first
    weight: float  # the plan's fairness weight: a tenant's share of its band is proportional to it
    cost: float  # expected work (prompt tokens + max_tokens): what fairness charges the tenant

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"ticket {self.request_id!r}: weight must be > 0, got {self.weight}")
        if not self.cost >= 0:
            raise ValueError(f"ticket {self.request_id!r}: cost must be >= 0, got {self.cost}")


class Capacity(Protocol):
    def slots(self, model: str) -> tuple[int, int]:
        """This router replica's share of the engines' slots, and how many of them it may hand out
        now (the share minus what it has routed and not seen complete)."""
        ...


@dataclass(eq=False, slots=True)
class Waiter:
    """A ticket in the queue: granted (result), refused (OverloadedError) or cancelled by its task."""

    ticket: Ticket
    seq: int  # arrival order
    since: float  # loop time it started waiting
    granted: asyncio.Future[None]
    expiry: asyncio.TimerHandle | None = None
    queued: bool = True
    light: bool = False  # set when it leaves the queue: its tenant was light (fairness.py)

    @property
    def vcost(self) -> float:
        """Its cost in its tenant's virtual time."""
        return self.ticket.cost / self.ticket.weight
