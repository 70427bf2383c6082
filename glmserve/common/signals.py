"""Foreground commands that serve until SIGINT/SIGTERM and then tear down what they started."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


@contextlib.contextmanager
def until_signal() -> Iterator[threading.Event]:
    """The event is set by SIGINT or SIGTERM; a signal also aborts the block (a Ctrl-C while
    starting stops the start). On leaving, both signals are ignored so that the caller's teardown
    runs to the end."""
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        yield stop
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
