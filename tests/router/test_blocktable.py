"""The index's hash table against a dict, through growth, deletions and reuse of deleted slots."""

from __future__ import annotations

import numpy as np

from glmserve.router.blocktable import MISSING, BlockTable, as_keys


def test_table_matches_a_dict_through_growth_and_deletions() -> None:
    rng = np.random.default_rng(7)
    table, reference = BlockTable(), {}
    for step in range(200):
        keys = rng.integers(0, 1 << 64, int(rng.integers(1, 400)), dtype=np.uint64).tolist()
        if reference and step % 3 == 0:  # some keys it holds already
            held = list(reference)
            keys += [held[i] for i in rng.integers(0, len(held), 40)]
        batch = np.unique(as_keys(keys))
        slots = table.insert(batch)  # before reading `values`: a growth replaces the array
        table.values[slots] = (batch % 1000).astype(np.int32)
        reference.update((k, k % 1000) for k in batch.tolist())
        if step % 2:
            held = np.array(list(reference), dtype=np.uint64)
            gone = np.unique(held[rng.integers(0, len(held), 150)])
            table.delete(table.find(gone))
            for k in gone.tolist():
                del reference[k]
    held = np.array(list(reference), dtype=np.uint64)
    slots = table.find(held)
    assert table.live == len(reference) == len(set(slots.tolist()))
    assert (table.values[slots] == held % 1000).all()
    absent = as_keys(rng.integers(0, 1 << 64, 2000, dtype=np.uint64).tolist())
    assert (table.find(absent) == MISSING).all()
    assert table.nbytes() / table.live < 30  # 12 bytes a slot, at most ~70% full after a rehash


def test_hashes_0_and_1_are_keys_too() -> None:
    table = BlockTable()
    slots = table.insert(as_keys([0, 1, 5]))
    table.values[slots] = [10, 11, 15]
    assert table.values[table.find(as_keys([0, 1, 5]))].tolist() == [10, 11, 15]


def last_bucket_keys(table: BlockTable) -> list[int]:
    """Keys whose home is the table's last bucket, as many as it has ways: stored, they fill its
    last slot, the one a MISSING (-1) index reads."""
    candidates = np.random.default_rng(11).integers(2, 1 << 64, 200 * len(table.keys) // 16, dtype=np.uint64)
    last = candidates[table._home(candidates) == len(table.keys) // 16 - 1]
    return [int(k) for k in last[:16]]


def test_lookup_of_a_missing_key_is_missing_whatever_the_last_slot_holds() -> None:
    table = BlockTable()
    table.values[table.insert(np.array(last_bucket_keys(table), dtype=np.uint64))] = 7
    assert table.keys[-1] > 1
    assert table.lookup(as_keys([12345, 67890])).tolist() == [MISSING, MISSING]
    assert table.lookup(table.keys[-1:]).tolist() == [7]


def test_keys_past_a_full_home_bucket_are_found_across_the_wrap_and_deletions() -> None:
    table = BlockTable()
    last = len(table._rows) - 1
    candidates = as_keys(np.random.default_rng(3).integers(0, 1 << 64, 200_000, dtype=np.uint64))
    crowd = candidates[table._home(candidates) == last]  # ~3 buckets' worth, all homed in the last
    present, absent = crowd[:40], crowd[40:60]
    table.values[table.insert(present)] = np.arange(40, dtype=np.int32)
    assert (table.lookup(present) == np.arange(40)).all()  # 16 at home, the rest wrapped to 0 and 1
    assert (table.lookup(absent) == MISSING).all()
    table.delete(table.find(present[10:20]))
    assert (table.lookup(present[20:]) == np.arange(20, 40)).all()
    assert (table.lookup(present[10:20]) == MISSING).all()
    mixed = np.concatenate([present[:10], absent, present[30:]])
    assert (table.lookup(mixed) == np.concatenate([np.arange(10), np.full(20, MISSING), np.arange(30, 40)])).all()
