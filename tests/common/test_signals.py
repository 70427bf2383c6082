"""until_signal: a signal ends the block, and the teardown after it cannot be interrupted."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from glmserve.common.signals import until_signal


@pytest.fixture(autouse=True)
def _restore_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_aborts_the_block_and_is_ignored_during_teardown(sig: signal.Signals) -> None:
    reached = []
    with until_signal() as stop:
        os.kill(os.getpid(), sig)
        reached.append("after the signal")
    assert stop.is_set()
    assert reached == []
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    os.kill(os.getpid(), sig)  # a second signal during teardown does nothing


def test_other_failures_propagate() -> None:
    with pytest.raises(RuntimeError), until_signal():
        raise RuntimeError("start failed")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
