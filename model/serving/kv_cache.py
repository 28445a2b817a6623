"""Where incremental inference keeps what recently scored users' last L-1 interactions left for
the next one: per attention layer keys and values, and the item encoder's pointer keys."""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np
import torch

from model.config import IntentRecConfig
from model.errors import CacheSizeError
from model.features import ROW_DTYPE
from model.serving.graphs import GraphOutputs


def cached_layers(config: IntentRecConfig) -> int:
    """Attention layers whose keys/values a user's cache holds: short-term, intent, item."""
    short = config.n_layers_short if config.use_short_term else 0
    intent = config.n_layers_intent if config.intent_tasks else 0
    return short + intent + config.n_layers_item


def keys_values_shape(config: IntentRecConfig, users: int, rows: int) -> tuple[int, ...]:
    """Keys/values of `rows` interactions of each of `users` users: (layers, key|value, users, heads,
    rows, head size). Layer-major, so that one layer's keys of a batch are one contiguous block."""
    heads = config.n_heads
    return (cached_layers(config), 2, users, heads, rows, config.d_model // heads)


@dataclass
class CacheEntry:
    slot: int
    rows: bytes | None  # the rows the cached ones were computed from (the last history_len - 1)
    newest_ts: int  # the newest of those rows' time: the next row's gap starts there
    round: int  # the last scoring round that used the entry; those of the current round stay


@dataclass
class Ring:
    """Where a batch of users' cached rows are (each slot a ring: a new row overwrites the oldest),
    and their host-side part: items, times, validity."""

    slots: np.ndarray  # (B,) int64
    positions: np.ndarray  # (B,) int64: each ring's oldest position, where the next row goes
    items: np.ndarray  # (B, L-1) int32
    ts: np.ndarray  # (B, L-1) int64
    valid: np.ndarray  # (B, L-1) bool


class KVCache:
    """What the last L-1 interactions of recently scored users leave for the next one: keys and
    values of every attention layer and the item encoder's pointer keys, in tensors on the scoring
    device, `max_users` slots at most (the least recently used user makes room); items, times and
    validity on the host. Device-side methods take slot (and position) indices already on the
    device, so that they travel with the batch's inputs.

    On the CPU all `max_users` slots are allocated at once, as zeroed memory that the system maps
    only when a slot is first written: resident memory grows with the users cached and never past
    the bound. (Tensors grown by copying held the old and the new cache at once: up to twice the
    bound.) On other devices the tensors grow by doubling, up to `max_users` slots."""

    def __init__(self, config: IntentRecConfig, max_users: int, device: torch.device):
        self.window = config.attention_window - 1
        self.max_users = max_users
        self.device = device
        slots = max_users if torch.device(device).type == "cpu" else 0
        try:
            self.keys_values = zeros(keys_values_shape(config, slots, self.window), device)
            self.pointer_keys = zeros((slots, self.window, config.pointer_key_size), device)
        except MemoryError:
            size_mb = max_users * self.bytes_per_user(config) >> 20
            raise CacheSizeError(f"a KV cache of {size_mb:,} MiB ({max_users:,} users) cannot be allocated on "
                                 "this machine; give it less memory (--kv-cache-mb)") from None
        self.items = np.zeros((slots, self.window), dtype=np.int32)
        self.ts = np.zeros((slots, self.window), dtype=np.int64)
        self.valid = np.zeros((slots, self.window), dtype=bool)
        self.next = np.zeros(slots, dtype=np.int64)  # each ring's oldest position
        self.entries: OrderedDict[Hashable, CacheEntry] = OrderedDict()
        self.used_slots = 0  # slots 0 .. used_slots - 1 have held a user
        self._read_buffers: dict[str, torch.Tensor] = {}  # see read()
        # What a step reads per user: keys/values and pointer keys (float32).
        floats = int(np.prod(keys_values_shape(config, 1, self.window))) + self.window * config.pointer_key_size
        self.read_bytes_per_user = 4 * floats

    @staticmethod
    def bytes_per_user(config: IntentRecConfig) -> int:
        """Keys/values and pointer keys (float32), items, times, validity, and the rows they came
        from (kept to recognise them)."""
        window = config.attention_window - 1
        floats = int(np.prod(keys_values_shape(config, 1, window))) + window * config.pointer_key_size
        return 4 * floats + window * (4 + 8 + 1) + (config.history_len - 1) * ROW_DTYPE.itemsize

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, user: Hashable, rows: bytes) -> CacheEntry | None:
        """The user's entry if it was computed from exactly these rows."""
        entry = self.entries.get(user)
        return entry if entry is not None and entry.rows == rows else None

    def claim(self, user: Hashable, round_: int) -> CacheEntry | None:
        """The entry to (re)fill for `user`: its own, a free slot, or the least recently used user's
        (unless that one was used in this round too: then there is no room and None comes back)."""
        entry = self.entries.get(user)
        if entry is None:
            slot = self._free_slot(round_)
            if slot is None:
                return None
            entry = self.entries[user] = CacheEntry(slot, None, 0, round_)
        entry.rows = None  # matches nothing until it is filled (after the graph has run)
        self.touch(user, entry, round_)
        return entry

    def touch(self, user: Hashable, entry: CacheEntry, round_: int) -> None:
        entry.round = round_
        self.entries.move_to_end(user)

    def ring(self, entries: Sequence[CacheEntry]) -> Ring:
        slots = np.array([entry.slot for entry in entries], dtype=np.int64)
        return Ring(slots, self.next[slots], self.items[slots], self.ts[slots], self.valid[slots])

    def read(self, slot_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values (keys_values_shape(B, L-1)) and pointer keys (B, L-1, d_model) of slots, in
        buffers that the next read overwrites. Reusing them matters on the CPU: a fresh tensor of
        that size is fresh memory from the system, and its page faults cost twice the copy."""
        B = len(slot_index)
        keys_values = self._read_buffer("keys_values", (*self.keys_values.shape[:2], B, *self.keys_values.shape[3:]))
        pointer_keys = self._read_buffer("pointer_keys", (B, *self.pointer_keys.shape[1:]))
        torch.index_select(self.keys_values, 2, slot_index, out=keys_values)
        torch.index_select(self.pointer_keys, 0, slot_index, out=pointer_keys)
        return keys_values, pointer_keys

    def _read_buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        size = math.prod(shape)
        if name not in self._read_buffers or self._read_buffers[name].numel() < size:
            self._read_buffers[name] = torch.empty(size, device=self.device)
        return self._read_buffers[name][:size].view(shape)

    def append(self, ring: Ring, slot_index, position_index, outputs: GraphOutputs, rows: np.ndarray) -> None:
        """Each ring takes the one new row of a step (rows: (B,))."""
        if self.window == 0:
            return
        new_keys_values = outputs.keys_values[:, :, :, :, -1].permute(2, 0, 1, 3, 4)
        self.keys_values[:, :, slot_index, :, position_index] = new_keys_values
        self.pointer_keys[slot_index, position_index] = outputs.pointer_keys[:, -1]
        self.items[ring.slots, ring.positions] = rows["item"]
        self.ts[ring.slots, ring.positions] = rows["ts"]
        self.valid[ring.slots, ring.positions] = True
        self.next[ring.slots] = (ring.positions + 1) % self.window

    def fill(self, slots: np.ndarray, slot_index, outputs: GraphOutputs, items, ts, valid) -> None:
        """Each slot's ring takes the last rows of a window (left padding, invalid, comes first):
        their items, times and validity (B, T) come from the host."""
        kept = min(outputs.pointer_keys.shape[1], self.window)
        if kept == 0:
            return
        positions = torch.arange(kept, device=self.device)[None, :]
        last_keys_values = outputs.keys_values[:, :, :, :, -kept:].permute(2, 4, 0, 1, 3, 5)
        self.keys_values[:, :, slot_index[:, None], :, positions] = last_keys_values
        self.pointer_keys[slot_index[:, None], positions] = outputs.pointer_keys[:, -kept:]
        for mine, theirs in ((self.items, items), (self.ts, ts), (self.valid, valid)):
            mine[slots] = 0
            mine[slots, :kept] = theirs[:, -kept:]
        self.next[slots] = kept % self.window

    def _free_slot(self, round_: int) -> int | None:
        if self.used_slots == len(self.next) < self.max_users:
            self._grow()
        if self.used_slots < len(self.next):
            self.used_slots += 1
            return self.used_slots - 1
        user, oldest = next(iter(self.entries.items()), (None, None))
        if oldest is None or oldest.round == round_:
            return None
        del self.entries[user]
        return oldest.slot

    def _grow(self) -> None:
        size = len(self.next)
        grown = min(self.max_users, max(8, 2 * size))

        def extend(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
            shape = list(tensor.shape)
            shape[dim] = grown - size
            return torch.cat([tensor, tensor.new_zeros(shape)], dim=dim)

        def extend_host(array: np.ndarray) -> np.ndarray:
            return np.concatenate([array, np.zeros((grown - size, *array.shape[1:]), dtype=array.dtype)])

        self.keys_values, self.pointer_keys = extend(self.keys_values, dim=2), extend(self.pointer_keys)
        self.items, self.ts, self.valid = extend_host(self.items), extend_host(self.ts), extend_host(self.valid)
        self.next = extend_host(self.next)


def zeros(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """float32 zeros on `device`; on the CPU from numpy's zeroed allocation (calloc), whose pages the
    system maps only when they are first written (torch.zeros writes every page at once)."""
    if torch.device(device).type == "cpu":
        return torch.from_numpy(np.zeros(shape, dtype=np.float32))
    return torch.zeros(shape, device=device)
