"""The KV cache's memory: within its bound on the CPU, resident only for the users it holds."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.model.serving.test_incremental import make_scorer, replay
from tests.model.test_intentrec import random_history

from model.errors import CacheSizeError
from model.serving.incremental import IncrementalScorer
from model.serving.kv_cache import KVCache

MIB = 1 << 20


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_a_cpu_cache_is_resident_only_for_the_users_it_holds():
    scorer = make_scorer()
    histories = {f"u{u}": random_history(12, seed=u) for u in range(4)}
    events = [(user, n) for n in range(1, 13) for user in histories]
    # The same calls on a small cache first: the model's own first-call allocations are not the cache's.
    replay(IncrementalScorer(scorer, cache_bytes=4 * KVCache.bytes_per_user(scorer.config)), scorer, histories,
           events, batch_size=4)  # fmt: skip

    # A margin for transparent huge pages: a written slot may make a 2 MiB page of each tensor resident.
    before = resident_bytes()
    incremental = IncrementalScorer(scorer, cache_bytes=1024 * MIB)
    assert resident_bytes() - before < 64 * MIB  # 1 GiB of slots, none written yet
    replay(incremental, scorer, histories, events, batch_size=4)
    assert len(incremental.cache) == 4
    assert resident_bytes() - before < 64 * MIB


def test_a_cpu_cache_never_holds_more_slots_than_its_bound():
    """All slots exist from the start, so filling the cache never copies it (a copy held the old
    and the new tensors at once: up to twice the bound)."""
    scorer = make_scorer()
    incremental = IncrementalScorer(scorer, cache_bytes=3 * KVCache.bytes_per_user(scorer.config))
    cache = incremental.cache
    assert cache.max_users == 3 and cache.keys_values.shape[2] == 3 and len(cache.next) == 3
    tensors = cache.keys_values.data_ptr(), cache.pointer_keys.data_ptr()

    histories = {f"u{u}": random_history(20, seed=u) for u in range(8)}
    replay(incremental, scorer, histories, [(user, n) for n in range(1, 21) for user in histories], batch_size=5)
    assert len(cache) == 3 and cache.keys_values.shape[2] == 3
    assert (cache.keys_values.data_ptr(), cache.pointer_keys.data_ptr()) == tensors
    assert cache.keys_values.device == torch.device("cpu")


def test_a_cache_larger_than_the_address_space_is_refused_with_what_to_lower():
    scorer = make_scorer()
    with pytest.raises(CacheSizeError, match=r"a KV cache of [\d,]+ MiB \([\d,]+ users\) cannot be allocated on this "
                                             r"machine; give it less memory \(--kv-cache-mb\)"):
        IncrementalScorer(scorer, cache_bytes=1 << 52)  # 4 PiB: more than any process can map
