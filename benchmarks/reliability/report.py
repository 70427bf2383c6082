"""The reliability report: one row per fault or abuse case, as a markdown table and a plot."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.results_io import markdown_table


@dataclass(slots=True)
class Row:
    case: str
    sent: int = 0
    completed: int = 0  # answered whole (a stream: every token and [DONE])
    migrated: int = 0  # moves to another engine replica (the ingress's counter)
    failed: Counter[str] = field(default_factory=Counter)  # by HTTP status or stream ending
    recovery_s: float = 0.0  # the longest a client waited to be served again after the fault
    delivered: int | None = None  # output tokens the clients received
    billed: int | None = None  # output tokens the ingress settled for the case's tenant
    lost: int = 0  # answers whose tokens differ from an uninterrupted run's
    billed_wrongly: bool | None = None
    note: str = ""

    def cells(self) -> list[Any]:
        failed = ", ".join(f"{n}x {status}" for status, n in sorted(self.failed.items())) or "-"
        tokens = "-" if self.delivered is None else f"{self.delivered} / {self.billed}"
        verdict = "-" if self.billed_wrongly is None else ("yes" if self.billed_wrongly else "no")
        return [self.case, self.sent, self.completed, self.migrated, failed, round(self.recovery_s, 1), tokens,
                self.lost, verdict, self.note]  # fmt: skip


HEADERS = ["case", "sent", "completed", "migrated", "failed (by status)", "recovery s",
           "tokens delivered / billed", "answers with lost tokens", "billed wrongly", "notes"]  # fmt: skip


def table(rows: list[Row]) -> str:
    return markdown_table(HEADERS, [row.cells() for row in rows])


def plot(rows: list[Row], ttft_ms: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cases, ttft) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    names = [row.case for row in rows]
    completed = [row.completed for row in rows]
    failed = [sum(row.failed.values()) for row in rows]
    cases.barh(names, completed, color="tab:green", label="completed")
    cases.barh(names, failed, left=completed, color="tab:red", label="refused or failed")
    cases.invert_yaxis()
    cases.set(xlabel="requests", title="requests by case")
    cases.legend(loc="lower right")
    for label, values in ttft_ms.items():
        ordered = sorted(values)
        if ordered:
            ttft.plot(ordered, [i / len(ordered) for i in range(len(ordered))], label=label)
    ttft.set(xlabel="TTFT (ms)", ylabel="fraction of admitted requests", title="TTFT by load")
    ttft.set_xscale("log")
    ttft.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
