from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from glmserve.router.events import AllBlocksCleared, BlockRemoved, BlockStored
from glmserve.router.index import KVIndex
from tests.router.test_blocktable import last_bucket_keys

CHAIN = [101, 102, 103, 104, 105]


def _index(*workers: str) -> KVIndex:
    index = KVIndex()
    for w in workers:
        index.attach(w)
    return index


def test_prefix_stops_at_first_missing_block() -> None:
    index = _index("a", "b", "c")
    index.apply("a", BlockStored(tuple(CHAIN), 16))
    index.apply("b", BlockStored((101, 102, 104, 105), 16))  # holds later blocks but not 103
    assert index.prefix_blocks([CHAIN], ["a", "b", "c", "unknown"]) == {"a": 5, "b": 2, "c": 0, "unknown": 0}
    assert index.prefix_blocks([CHAIN[:2], [], CHAIN[2:]], ["a", "b"]) == {"a": 5, "b": 2}
    assert index.prefix_blocks([CHAIN[:3]], ["a"]) == {"a": 3}
    assert index.prefix_blocks([], ["a"]) == {"a": 0}


def test_remove_and_clear_update_only_that_worker() -> None:
    index = _index("a", "b")
    for w in ("a", "b"):
        index.store(w, CHAIN)
    index.apply("a", BlockRemoved((104, 105, 999)))  # 999 was never stored: ignored
    assert index.prefix_blocks([CHAIN], ["a", "b"]) == {"a": 3, "b": 5}
    index.apply("b", AllBlocksCleared())
    assert index.prefix_blocks([CHAIN], ["a", "b"]) == {"a": 3, "b": 0}
    assert (index.blocks("a"), index.blocks("b"), index.size()) == (3, 0, 3)


def test_detached_slot_is_reused_empty() -> None:
    index = _index("a", "b")
    index.store("a", CHAIN)
    index.detach("a")
    index.attach("c")  # takes a's slot
    assert index.prefix_blocks([CHAIN], ["c", "b"]) == {"c": 0, "b": 0}
    assert index.size() == 0


def test_many_workers_each_get_their_own_prefix() -> None:
    workers = [f"w{i}" for i in range(70)]  # more slots than a 64-bit word
    index = _index(*workers)
    for i, w in enumerate(workers):
        index.store(w, CHAIN[: i % 6])
    assert index.prefix_blocks([CHAIN], workers) == {w: i % 6 for i, w in enumerate(workers)}


def test_prefix_match_reads_hashes_only_while_some_worker_holds_them() -> None:
    index = _index("a", "b")
    index.store("a", CHAIN[:2])
    read: list[list[int]] = []

    def lazily() -> Iterator[list[int]]:
        for run in ([101], [102, 103], [104], [105]):
            read.append(run)
            yield run

    assert index.prefix_blocks(lazily(), ["a", "b"]) == {"a": 2, "b": 0}
    # runs are looked up in chunks of 1, 2, 4... runs: 103 is nowhere, so no chunk after its one is read
    assert read == [[101], [102, 103], [104]]


def test_expected_blocks_count_until_their_deadline_and_a_new_expectation_extends_it() -> None:
    index = _index("a", "b")
    index.store("a", CHAIN[:1])
    index.expect("a", CHAIN[1:4], until=10.0)
    index.expect("b", CHAIN[:2], until=10.0)
    assert index.prefix_blocks([CHAIN], ["a", "b"]) == {"a": 4, "b": 2}
    index.expect("b", CHAIN[:1], until=20.0)
    index.expire(10.0)
    assert index.prefix_blocks([CHAIN], ["a", "b"]) == {"a": 1, "b": 1}
    index.expire(20.0)
    assert index.prefix_blocks([CHAIN], ["a", "b"]) == {"a": 1, "b": 0}
    assert index.size() == 1  # expectations are not entries


def test_clear_and_detach_drop_expectations() -> None:
    index = _index("a", "b")
    index.expect("a", CHAIN, until=10.0)
    index.expect("b", CHAIN, until=10.0)
    index.clear("a")
    index.detach("b")
    index.attach("c")  # takes b's slot
    assert index.prefix_blocks([CHAIN], ["a", "c"]) == {"a": 0, "c": 0}
    index.expire(11.0)  # deadlines of departed expectations are harmless
    assert index.prefix_blocks([CHAIN], ["a", "c"]) == {"a": 0, "c": 0}


def test_index_matches_a_set_per_worker_through_sharing_eviction_and_restarts() -> None:
    """Blocks held by one worker and by several (the bitmask path), evicted, cleared, the worker
    gone: prefix lengths, counts and the longest holders agree with plain sets (holder sets are
    shared entries counted by their blocks: a miscount would hand one block's holders to another)."""
    rng = np.random.default_rng(3)
    workers = [f"w{i}" for i in range(40)]
    index, held = _index(*workers), {w: set() for w in workers}
    chains = [[int(h) for h in rng.integers(2, 1 << 64, 64, dtype=np.uint64)] for _ in range(6)]
    for step in range(300):
        w = workers[int(rng.integers(len(workers)))]
        chain = chains[int(rng.integers(len(chains)))]
        upto = int(rng.integers(1, len(chain)))
        action = step % 7
        if action < 4:
            index.store(w, chain[:upto])
            held[w].update(chain[:upto])
        elif action < 6:
            index.remove(w, chain[upto:])
            held[w].difference_update(chain[upto:])
        elif step % 21 == 6:
            index.detach(w)
            index.attach(w)
            held[w] = set()
        else:
            index.clear(w)
            held[w] = set()
    for chain in chains:
        expected = {w: next((i for i, h in enumerate(chain) if h not in held[w]), len(chain)) for w in workers}
        assert index.prefix_blocks([chain[:10], chain[10:]], workers) == expected
        assert (
            index.blocks_of(index.walk([chain], index.mask(workers)), workers) == expected
        )  # one walk, read per worker
        top = index.longest([chain], index.mask(workers), limit=3)
        ranked = sorted((n for n in expected.values() if n), reverse=True)
        assert sorted(top.values(), reverse=True)[: len(ranked[:3])] == ranked[:3]
        assert all(expected[w] == n for w, n in top.items())
    assert {w: index.blocks(w) for w in workers} == {w: len(b) for w, b in held.items()}
    assert index.size() == sum(len(b) for b in held.values())


def test_attaching_reserves_room_for_the_engines_caches() -> None:
    index = KVIndex()
    for w in range(10):
        index.attach(f"w{w}", cache_blocks=10_000)
    before = index.nbytes()
    for w in range(10):
        index.store(f"w{w}", list(range(w * 10_000 + 2, (w + 1) * 10_000 + 2)))
    assert index.nbytes() == before  # no growth while their caches fill
    assert index.size() == 100_000
    assert before / index.size() < 20


def test_a_prompt_nobody_holds_matches_nobody_whatever_the_tables_last_slot_holds() -> None:
    index = _index("a", "b")
    index.store("a", last_bucket_keys(index._table))
    assert index._table.keys[-1] > 1
    assert index.prefix_blocks([CHAIN], ["a", "b"]) == {"a": 0, "b": 0}
    assert index.longest([CHAIN], index.mask(["a", "b"]), limit=1) == {}


def test_a_prefix_many_workers_hold_is_theirs_alone() -> None:
    """A tenant's context cached on dozens of engines: its holders are read from their bitmask in
    array steps (a few holders, bit by bit); both readings give the same workers."""
    workers = [f"w{i:02d}" for i in range(70)]
    index = _index(*workers)
    for w in workers[5:45]:
        index.store(w, CHAIN)
    index.store("w00", CHAIN[:2])
    index.detach("w44")  # its slot's bit is gone from every mask, and it is no one's now
    assert index.longest([CHAIN], index.mask(workers), limit=1) == dict.fromkeys(workers[5:44], len(CHAIN))
    assert index.longest([CHAIN], index.mask(workers), limit=40) == {
        **dict.fromkeys(workers[5:44], len(CHAIN)),
        "w00": 2,
    }
    assert index.prefix_blocks([CHAIN], workers) == {w: len(CHAIN) if "w05" <= w < "w44" else 0 for w in workers} | {
        "w00": 2
    }
