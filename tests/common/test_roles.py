"""The pool roles and the router's view of them."""

from __future__ import annotations

from typing import get_args

import pytest

from glmserve.common.roles import Role, WorkerRole, worker_role
from glmserve.router import types


@pytest.mark.parametrize(("role", "worker"), [("colocated", "decode"), ("prefill", "prefill"), ("decode", "decode")])
def test_a_colocated_engine_is_a_decode_worker_to_the_router(role: Role, worker: WorkerRole) -> None:
    assert worker_role(role) == worker


def test_every_role_maps_onto_a_worker_role() -> None:
    assert set(get_args(Role)) == {"colocated", *get_args(WorkerRole)}
    assert {worker_role(r) for r in get_args(Role)} == set(get_args(WorkerRole))
    assert types.Role is WorkerRole  # the router defines no role names of its own
