"""A vLLM message-queue reader on CPU waits for the next message without burning a core, and
still gets it at once (the engine core waits like this for every step of its worker)."""

from __future__ import annotations

import threading
import time

from vllm.distributed.device_communicators.shm_broadcast import MessageQueue

from glmserve.serving.vllm_plugin import cpu_polite_readers

WAIT_S = 0.5


def test_a_waiting_reader_sleeps_between_polls_and_still_gets_the_message_promptly() -> None:
    cpu_polite_readers.apply()
    writer = MessageQueue(n_reader=1, n_local_reader=1)
    seen: dict[str, float] = {}

    def read() -> None:
        reader = MessageQueue.create_from_handle(writer.export_handle(), 0)
        reader.wait_until_ready()
        assert reader.dequeue() == "first"  # within a second of this read, vLLM's reader busy-waits
        cpu = time.thread_time()
        assert reader.dequeue() == "second"
        seen["arrived"] = time.monotonic()
        seen["cpu_s"] = time.thread_time() - cpu

    thread = threading.Thread(target=read)
    thread.start()
    writer.wait_until_ready()
    writer.enqueue("first")
    time.sleep(WAIT_S)
    sent = time.monotonic()
    writer.enqueue("second")
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert seen["arrived"] - sent < 0.05
    # vLLM's own busy-wait spends the whole wait on the CPU (~0.5 s here); polling every 100 us
    # costs a few percent of it
    assert seen["cpu_s"] < 0.3 * WAIT_S, seen
