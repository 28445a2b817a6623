"""Incremental inference: a user's new event scored from what was cached for the user's earlier
interactions, instead of a forward pass over the whole history.

Why it is exact: positions come from each interaction's own timestamp and every attention layer
reaches at most L-1 interactions back (model.intentrec), so what a layer computes for a past
interaction never changes when a new one arrives. A new event needs, per attention layer, only the
keys and values of the user's last L-1 interactions: its one row runs through each layer of the
short-term, intent and item transformers in turn (chained as in IntentRec.forward), attending to
those and to itself; the item encoder's repeat pointer reads the same rows' pointer keys and items.
That is O(L) per layer, against O(L * history_len) for a forward pass over the history.

Two graphs over plain tensors, which the backends (model.serving.backends) run eagerly or compile:

- WindowGraph: the forward pass over a left-padded window of rows, giving the predictions after the
  last row and what every row leaves in a cache. It fills a user's cache (a first event, a cache
  miss, a late event inserted in the middle), and is the full recomputation when caching is off.
- StepGraph: one new row per user, after the cached rows of the user's last L-1 interactions.

What float32 or TensorRT cannot compute is prepared on the host: the time encoding (float64
phases of absolute time), the gaps between interactions, the attention masks and each row's days
since the time origin (for IntentMatch's release recency), all from int64 times.

`IncrementalScorer.score(users, histories)` is the serving entry point. It returns what
`Scorer.score(histories)` returns, keeping recently scored users' rows in a bounded cache on the
scoring device (KVCache). A cached entry is used only if it was computed from exactly the rows that
precede the new one (their last history_len - 1, compared byte for byte: the new row's prediction
depends on nothing older), so evictions, restarts, late events, idle-user resets and several events
of one user in a batch can cost a rebuild from the history, never a wrong score.
"""
from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Hashable, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from model.config import IntentRecConfig
from model.features import MAX_GAP_S, ROW_DTYPE
from model.intentrec import (
    CausalTransformer,
    Intent,
    IntentRec,
    attention_mask,
    days_since_origin,
    intent_probabilities,
    task_sizes,
)
from model.serving.scorer import Predictions, Scorer, Scores, padded_length

DEFAULT_CACHE_BYTES = 1 << 30
# Users x rows x rows of one window call at most: bounds the memory of its masks and attention weights.
WINDOW_CELLS = 1 << 24
# Cached rows read by one step call at most: few enough that they are still in the CPU's cache when
# attention reads them after they were gathered (larger batches of long windows are split).
STEP_READ_BYTES = 32 << 20
MAX_GAP_MS = int(MAX_GAP_S * 1000)
INDEX_FIELDS = ("item", "action", "kind", "release", "device", "genres")
# Both graphs' inputs prepared on the host, in order. StepGraph then takes the cached rows: their
# items (from the host), keys/values and pointer keys (read on the device).
GRAPH_INPUTS = (*INDEX_FIELDS, "watch_s", "gap_s", "time_code", "days", "attend", "attend_short")


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


# --------------------------------------------------------------------------- the graphs


def run_rows(
    model: IntentRec,
    inputs: dict[str, torch.Tensor],
    past_items: torch.Tensor | None = None,
    past_keys_values: torch.Tensor | None = None,
    past_pointer_keys: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """IntentRec.forward over T new rows that may follow P cached ones: their items (B, P), keys and
    values (keys_values_shape(B, P)) and pointer keys (B, P, d_model: ItemEncoder.repeat_key of their
    item-encoder inputs), which the repeat pointer reads; masks are (B, T, P + T).

    Returns the graph outputs: the next-item distribution, the intent probabilities of each task,
    Z and the intent weights, all after the last row; then what the new rows leave in a cache:
    keys/values (keys_values_shape(B, T)) and pointer keys (B, T, d_model)."""
    c = model.config
    attend, attend_short = inputs["attend"].unsqueeze(1), inputs["attend_short"].unsqueeze(1)
    new_keys_values: list[torch.Tensor] = []

    def embed(module: CausalTransformer, x: torch.Tensor) -> torch.Tensor:
        return module.input(x) + inputs["time_code"]  # CausalTransformer.embed, time encoded on the host

    def encode(module: CausalTransformer, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # CausalTransformer.encode and Block.forward, each block with its layer of the cache.
        for block in module.blocks:
            layer_past = None if past_keys_values is None else past_keys_values[len(new_keys_values)]
            y, keys, values = block.attention.attend(block.norm1(h), mask, layer_past)
            new_keys_values.append(torch.stack([keys, values]))
            h = h + y
            h = h + block.mlp(block.norm2(h))
        return module.norm(h)

    features = model.features(inputs, inputs["gap_s"])
    context = [features]
    if model.short_term is not None:
        short = model.short_term.transformer
        context.append(encode(short, embed(short, features), attend_short))
    context = torch.cat(context, dim=-1)

    intent_outputs, intent_probs = [], {}
    item_input = context
    if c.intent_tasks:
        intent = model.intent_encoder.transformer
        intent_probs = intent_probabilities(model.intent_heads(encode(intent, embed(intent, context), attend)))
        z, weights = model.intent_fusion(intent_probs)
        intent_outputs = [intent_probs[task][:, -1] for task in intent_probs] + [z[:, -1], weights[:, -1]]
        if c.feeds_intent:
            item_input = torch.cat([context, z], dim=-1)

    item_encoder = model.item_encoder
    item_inputs = embed(item_encoder.transformer, item_input)
    h_item = encode(item_encoder.transformer, item_inputs, attend)
    new_pointer_keys = item_encoder.repeat_key(item_inputs)
    pointer_keys, items = new_pointer_keys, inputs["item"]
    if past_pointer_keys is not None:
        pointer_keys = torch.cat([past_pointer_keys, new_pointer_keys], dim=1)
        items = torch.cat([past_items, items], dim=1)
    intent = None
    if item_encoder.intent_match is not None:
        intent = Intent({task: p[:, -1:] for task, p in intent_probs.items()}, inputs["days"][:, -1:])
    probs = item_encoder.next_item_probs(
        h_item[:, -1:], pointer_keys, items, attend[:, :, -1:], model.features.item.weight, intent
    )
    return (probs[:, 0], *intent_outputs, torch.stack(new_keys_values), new_pointer_keys)


class WindowGraph(nn.Module):
    """The forward pass over a left-padded window of rows (no cache); masks are (B, T, T)."""

    def __init__(self, model: IntentRec):
        super().__init__()
        self.model = model

    def forward(self, item, action, kind, release, device, genres, watch_s, gap_s, time_code, days, attend, attend_short):
        values = (item, action, kind, release, device, genres, watch_s, gap_s, time_code, days, attend, attend_short)
        return run_rows(self.model, dict(zip(GRAPH_INPUTS, values)))


class StepGraph(nn.Module):
    """One new row per user (T = 1) after its L-1 cached rows; masks are (B, 1, L)."""

    def __init__(self, model: IntentRec):
        super().__init__()
        self.model = model

    def forward(
        self, item, action, kind, release, device, genres, watch_s, gap_s, time_code, days, attend, attend_short,
        past_items, past_keys_values, past_pointer_keys,
    ):  # fmt: skip
        values = (item, action, kind, release, device, genres, watch_s, gap_s, time_code, days, attend, attend_short)
        inputs = dict(zip(GRAPH_INPUTS, values))
        return run_rows(self.model, inputs, past_items, past_keys_values, past_pointer_keys)


@dataclass
class GraphOutputs:
    item_scores: torch.Tensor  # (B, n_items) p(next item)
    intent_probs: dict[str, torch.Tensor]
    intent_embedding: torch.Tensor | None
    intent_weights: torch.Tensor | None
    keys_values: torch.Tensor  # keys_values_shape(B, T)
    pointer_keys: torch.Tensor  # (B, T, d_model)


def split_outputs(config: IntentRecConfig, outputs: Sequence[torch.Tensor]) -> GraphOutputs:
    tasks = config.intent_tasks
    item_scores, *middle, keys_values, pointer_keys = outputs
    if not tasks:
        return GraphOutputs(item_scores, {}, None, None, keys_values, pointer_keys)
    probs = dict(zip(tasks, middle[: len(tasks)]))
    z, weights = middle[len(tasks) :]
    return GraphOutputs(item_scores, probs, z, weights, keys_values, pointer_keys)


# --------------------------------------------------------------------------- host-side inputs


@dataclass
class HostBatch:
    """A graph's host-side inputs as numpy arrays, and each row's item, time and validity."""

    inputs: list[np.ndarray]
    items: np.ndarray  # (B, T) int32
    ts: np.ndarray  # (B, T) int64
    valid: np.ndarray  # (B, T) bool


def graph_inputs(
    rows: np.ndarray, gap_s, attend, attend_short, config: IntentRecConfig, time_encoding
) -> list[np.ndarray]:
    """GRAPH_INPUTS in order: index fields as int32 (TensorRT has no int16 and treats int8 as
    quantized), then what the rows' int64 times give: their time encoding and days since the origin."""
    fields = [rows[name].astype(np.int32) for name in INDEX_FIELDS]
    ts = torch.from_numpy(rows["ts"].copy())
    with torch.inference_mode():
        time_code = time_encoding(ts).numpy()
    days = days_since_origin(ts, config.time_origin_ms).numpy()
    return [*fields, rows["watch_s"], gap_s, time_code, days, attend, attend_short]


def window_batch(histories: Sequence[np.ndarray], length: int, config: IntentRecConfig, time_encoding) -> HostBatch:
    """Histories left-padded to `length` rows, so that every user's newest row is the last one. The
    oldest row of each counts as the start of the history (the longest gap), as in Scorer.predict."""
    B = len(histories)
    rows = np.zeros((B, length), dtype=ROW_DTYPE)
    valid = np.zeros((B, length), dtype=bool)
    first = np.empty(B, dtype=np.int64)
    for b, history in enumerate(histories):
        first[b] = length - len(history)
        rows[b, first[b] :] = history
        valid[b, first[b] :] = True
    ts = rows["ts"].copy()
    previous_ts = np.empty_like(ts)
    previous_ts[:, 1:] = ts[:, :-1]
    previous_ts[np.arange(B), first] = ts[np.arange(B), first] - MAX_GAP_MS
    gap_s = np.where(valid, (ts - previous_ts).astype(np.float32) / np.float32(1000.0), np.float32(0.0))
    valid_t, ts_t = torch.from_numpy(valid), torch.from_numpy(ts)
    attend = attention_mask(valid_t, ts_t, config.attention_window, None)[:, 0].numpy()
    attend_short = attention_mask(valid_t, ts_t, config.attention_window, config.short_term_window_ms)[:, 0].numpy()
    inputs = graph_inputs(rows, gap_s, attend, attend_short, config, time_encoding)
    return HostBatch(inputs, inputs[0], ts, valid)


def step_batch(rows: np.ndarray, previous_ts: np.ndarray, cached: Ring, config, time_encoding) -> HostBatch:
    """One new row per user (rows: (B,)) after its cached rows; previous_ts: the newest cached time
    of each user. Ends with the cached rows' items."""
    rows = rows.reshape(-1, 1)
    ts = rows["ts"].copy()
    gap_s = (ts - previous_ts.reshape(-1, 1)).astype(np.float32) / np.float32(1000.0)
    itself = np.ones((len(rows), 1), dtype=bool)
    # The cached rows are the user's last L-1, all within the attention window.
    recent = cached.valid & (ts - cached.ts <= config.short_term_window_ms)
    attend = np.concatenate([cached.valid, itself], axis=1)[:, None, :]
    attend_short = np.concatenate([recent, itself], axis=1)[:, None, :]
    inputs = graph_inputs(rows, gap_s, attend, attend_short, config, time_encoding)
    return HostBatch([*inputs, cached.items], inputs[0], ts, itself)


TORCH_DTYPES = {np.dtype(t): getattr(torch, str(np.dtype(t))) for t in (np.int32, np.int64, np.float32, np.bool_)}


class HostToDevice:
    """Moves a batch's input arrays to the device in one copy: they are packed into one host buffer
    (page-locked for CUDA, so that the copy is asynchronous) and the graph's inputs are views into
    its device copy. On the CPU the views are into the host buffer itself, which is reused: a
    batch's inputs stay valid until the next batch is packed."""

    ALIGN = 64

    def __init__(self, device: torch.device):
        self.device = device
        self._buffer = torch.empty(0, dtype=torch.uint8)

    def __call__(self, arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
        offsets, size = [], 0
        for array in arrays:
            offsets.append(size)
            size += -(-array.nbytes // self.ALIGN) * self.ALIGN
        host = self._host_buffer(size)
        staging = host.numpy()
        for array, offset in zip(arrays, offsets):
            staging[offset : offset + array.nbytes] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        moved = host[:size].to(self.device, non_blocking=True)
        return [
            moved[offset : offset + array.nbytes].view(TORCH_DTYPES[array.dtype]).view(array.shape)
            for array, offset in zip(arrays, offsets)
        ]

    def _host_buffer(self, size: int) -> torch.Tensor:
        if self._buffer.numel() < size:
            capacity = max(size, 2 * self._buffer.numel())
            self._buffer = torch.empty(capacity, dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        return self._buffer


# --------------------------------------------------------------------------- backends


class Backend(Protocol):
    """Runs the two graphs (model.serving.backends has the compiled ones). Inputs are on `device`; outputs
    are a tuple, as split_outputs reads it. `max_batch`: users per call, None for no limit."""

    name: str
    device: torch.device
    max_batch: int | None

    def window(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]: ...

    def step(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]: ...


class EagerBackend:
    """The graphs in eager PyTorch, on the CPU (sharing the scorer's model) or on a GPU (a copy)."""

    name = "eager"
    max_batch = None

    def __init__(self, model: IntentRec, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        if self.device.type != "cpu":
            on_device = IntentRec(model.config)
            on_device.load_state_dict(model.state_dict())
            model = on_device.to(self.device).eval()
        self.window_graph = WindowGraph(model).eval()
        self.step_graph = StepGraph(model).eval()

    @torch.inference_mode()
    def window(self, *inputs):
        return self.window_graph(*inputs)

    @torch.inference_mode()
    def step(self, *inputs):
        return self.step_graph(*inputs)


# --------------------------------------------------------------------------- the cache


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
    device that grow up to `max_users` slots (the least recently used user makes room); items,
    times and validity on the host. Device-side methods take slot (and position) indices already on
    the device, so that they travel with the batch's inputs."""

    def __init__(self, config: IntentRecConfig, max_users: int, device: torch.device):
        self.window = config.attention_window - 1
        self.max_users = max_users
        self.device = device
        self.keys_values = torch.zeros(keys_values_shape(config, 0, self.window), device=device)
        self.pointer_keys = torch.zeros((0, self.window, config.d_model), device=device)
        self.items = np.zeros((0, self.window), dtype=np.int32)
        self.ts = np.zeros((0, self.window), dtype=np.int64)
        self.valid = np.zeros((0, self.window), dtype=bool)
        self.next = np.zeros(0, dtype=np.int64)  # each ring's oldest position
        self.entries: OrderedDict[Hashable, CacheEntry] = OrderedDict()
        self.free: list[int] = []
        self._read_buffers: dict[str, torch.Tensor] = {}  # see read()
        # What a step reads per user: keys/values and pointer keys (float32).
        floats = int(np.prod(keys_values_shape(config, 1, self.window))) + self.window * config.d_model
        self.read_bytes_per_user = 4 * floats

    @staticmethod
    def bytes_per_user(config: IntentRecConfig) -> int:
        """Keys/values and pointer keys (float32), items, times, validity, and the rows they came
        from (kept to recognise them)."""
        window = config.attention_window - 1
        floats = int(np.prod(keys_values_shape(config, 1, window))) + window * config.d_model
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

    def fill(self, slots: np.ndarray, slot_index, outputs: GraphOutputs, batch: HostBatch) -> None:
        """Each slot's ring takes the last rows of a window (left padding, invalid, comes first)."""
        kept = min(outputs.pointer_keys.shape[1], self.window)
        if kept == 0:
            return
        positions = torch.arange(kept, device=self.device)[None, :]
        last_keys_values = outputs.keys_values[:, :, :, :, -kept:].permute(2, 4, 0, 1, 3, 5)
        self.keys_values[:, :, slot_index[:, None], :, positions] = last_keys_values
        self.pointer_keys[slot_index[:, None], positions] = outputs.pointer_keys[:, -kept:]
        for mine, theirs in ((self.items, batch.items), (self.ts, batch.ts), (self.valid, batch.valid)):
            mine[slots] = 0
            mine[slots, :kept] = theirs[:, -kept:]
        self.next[slots] = kept % self.window

    def _free_slot(self, round_: int) -> int | None:
        if self.free:
            return self.free.pop()
        if len(self.next) < self.max_users:
            return self._grow()
        user, oldest = next(iter(self.entries.items()), (None, None))
        if oldest is None or oldest.round == round_:
            return None
        del self.entries[user]
        return oldest.slot

    def _grow(self) -> int:
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
        self.free.extend(range(grown - 1, size, -1))
        return size


# --------------------------------------------------------------------------- the scorer


class IncrementalScorer:
    """Scores micro-batches of (user, history) the way `Scorer.score` does: from the user's cached
    rows when the rows before the new one are cached, else from the history (then cached).

    `backend`: who runs the graphs (model.serving.backends.load_backend; default eager on the CPU).
    `cache_bytes`: memory for cached users (KVCache.bytes_per_user each); 0 turns caching off, so
    that every event is a full recomputation through the backend. One call at a time (a lock).
    """

    def __init__(self, scorer: Scorer, backend: Backend | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.scorer = scorer
        self.config = scorer.config
        self.backend = backend if backend is not None else EagerBackend(scorer.model)
        self.history_len = scorer.history_len
        self.row_dtype = scorer.row_dtype
        self.model_ref = scorer.model_ref
        self.featurize = scorer.featurize
        self.to_scores = scorer.to_scores  # Predictions -> Scores, for callers that look at both
        self.cache = KVCache(self.config, cache_bytes // KVCache.bytes_per_user(self.config), self.backend.device)
        # The three transformers encode time identically (same size and origin).
        self.time_encoding = scorer.model.item_encoder.transformer.time
        self.to_device = HostToDevice(self.backend.device)
        self.scored_from_cache = 0  # events scored by a step from cached rows
        self.scored_from_history = 0  # events scored by a forward pass over their history
        self._round = 0
        self._lock = threading.Lock()

    def score(self, users: Sequence[Hashable], histories: Sequence[np.ndarray], top_k: int = 10) -> list[Scores]:
        return self.scorer.to_scores(self.predict(users, histories), top_k)

    def predict(self, users: Sequence[Hashable], histories: Sequence[np.ndarray]) -> Predictions:
        """histories[i]: users[i]'s rows up to and including the event to score, oldest first. A user
        may appear several times, in event order: each history then extends the one before."""
        if len(users) != len(histories):
            raise ValueError(f"{len(users)} users but {len(histories)} histories")
        histories = [np.asarray(h, dtype=ROW_DTYPE)[-self.history_len :] for h in histories]
        if not histories or min(len(h) for h in histories) == 0:
            raise ValueError("every history must hold at least the interaction being scored")
        results = PredictionArrays(self.config, len(histories))
        with self._lock:
            if self.cache.max_users == 0:
                self._run_windows(list(range(len(histories))), users, histories, results, cache=False)
            else:
                for round_indices in rounds(users):
                    self._score_round(round_indices, users, histories, results)
        return results.predictions()

    def _score_round(self, indices: list[int], users, histories, results: PredictionArrays) -> None:
        self._round += 1
        steps, entries, windows = [], [], []
        for i in indices:
            entry = self.cache.lookup(users[i], self._cached_rows(histories[i][:-1]))
            if entry is None:
                windows.append(i)
            else:
                self.cache.touch(users[i], entry, self._round)
                steps.append(i)
                entries.append(entry)
        size = self._chunk_size(len(steps), max(1, STEP_READ_BYTES // max(1, self.cache.read_bytes_per_user)))
        for start in range(0, len(steps), size):
            self._run_steps(steps[start : start + size], entries[start : start + size], histories, results)
        self._run_windows(windows, users, histories, results, cache=True)

    def _run_steps(self, indices: list[int], entries: list[CacheEntry], histories, results) -> None:
        ring = self.cache.ring(entries)
        rows = np.empty(len(indices), dtype=ROW_DTYPE)
        for b, i in enumerate(indices):
            rows[b] = histories[i][-1]
        previous_ts = np.array([entry.newest_ts for entry in entries], dtype=np.int64)
        batch = step_batch(rows, previous_ts, ring, self.config, self.time_encoding)
        *inputs, slot_index, position_index = self.to_device([*batch.inputs, ring.slots, ring.positions])
        outputs = split_outputs(self.config, self.backend.step(*inputs, *self.cache.read(slot_index)))
        results.put(indices, outputs)
        self.scored_from_cache += len(indices)
        self.cache.append(ring, slot_index, position_index, outputs, rows)
        for i, entry in zip(indices, entries):
            self._remember(entry, histories[i])

    def _run_windows(self, indices: list[int], users, histories, results, cache: bool) -> None:
        if not indices:
            return
        indices = sorted(indices, key=lambda i: len(histories[i]))  # chunks of similar lengths pad less
        longest = padded_length(len(histories[indices[-1]]), self.history_len)
        size = self._chunk_size(len(indices), max(1, WINDOW_CELLS // (longest * longest)))
        for start in range(0, len(indices), size):
            chunk = indices[start : start + size]
            length = padded_length(max(len(histories[i]) for i in chunk), self.history_len)
            batch = window_batch([histories[i] for i in chunk], max(2, length), self.config, self.time_encoding)
            # Claimed before the graph runs, so that the slots travel with the inputs.
            claimed = [(b, self.cache.claim(users[i], self._round)) for b, i in enumerate(chunk)] if cache else []
            claimed = [(b, entry) for b, entry in claimed if entry is not None]
            kept = np.array([b for b, _ in claimed], dtype=np.int64)
            slots = np.array([entry.slot for _, entry in claimed], dtype=np.int64)
            *inputs, kept_index, slot_index = self.to_device([*batch.inputs, kept, slots])
            outputs = split_outputs(self.config, self.backend.window(*inputs))
            results.put(chunk, outputs)
            self.scored_from_history += len(chunk)
            if claimed:
                kept_outputs = replace(
                    outputs,
                    keys_values=outputs.keys_values[:, :, kept_index],
                    pointer_keys=outputs.pointer_keys[kept_index],
                )
                kept_rows = HostBatch([], batch.items[kept], batch.ts[kept], batch.valid[kept])
                self.cache.fill(slots, slot_index, kept_outputs, kept_rows)
                for b, entry in claimed:
                    self._remember(entry, histories[chunk[b]])

    def _remember(self, entry: CacheEntry, history: np.ndarray) -> None:
        entry.rows = self._cached_rows(history)
        entry.newest_ts = int(history["ts"][-1])

    def _cached_rows(self, history: np.ndarray) -> bytes:
        """What identifies a cache entry: the history's last history_len - 1 rows (the next row's
        prediction depends on nothing older) and, by their length, how many there are (fewer
        means the whole history, whose first row has no predecessor)."""
        return history[len(history) - min(len(history), self.history_len - 1) :].tobytes()

    def _chunk_size(self, n: int, limit: int | None = None) -> int:
        return max(1, min(n, self.backend.max_batch or n, limit or n))


def load_serving_scorer(
    model: str | os.PathLike | Scorer, backend: str = "eager", cache_bytes: int = DEFAULT_CACHE_BYTES
) -> IncrementalScorer:
    """The scorer a stream serves with: the checkpoint `model` (a directory, or a loaded Scorer),
    its graphs run by `backend` (a spec of model.serving.backends.load_backend, which raises
    BackendError), `cache_bytes` of cached users. Live runs, demos and backtests all build theirs here."""
    from model.serving.backends import load_backend  # it imports this module

    scorer = model if isinstance(model, Scorer) else Scorer.load(model)
    return IncrementalScorer(scorer, load_backend(backend, scorer.model), cache_bytes)


def rounds(users: Sequence[Hashable]) -> list[list[int]]:
    """Request indices grouped so that a user appears at most once per round, in request order: a
    user's second event in a batch is scored in the round after its first."""
    grouped: list[list[int]] = []
    seen: dict[Hashable, int] = {}
    for i, user in enumerate(users):
        round_ = seen.get(user, -1) + 1
        seen[user] = round_
        if round_ == len(grouped):
            grouped.append([])
        grouped[round_].append(i)
    return grouped


class PredictionArrays:
    """Predictions filled in request order from several graph calls."""

    def __init__(self, config: IntentRecConfig, n: int):
        self.item_scores = np.empty((n, config.n_items), dtype=np.float32)
        self.intent_probs = {task: np.empty((n, size), dtype=np.float32) for task, size in task_sizes(config).items()}
        tasks = len(config.intent_tasks)
        self.intent_embedding = np.empty((n, config.d_proj), dtype=np.float32) if tasks else None
        self.intent_weights = np.empty((n, tasks), dtype=np.float32) if tasks else None

    def put(self, indices: list[int], outputs: GraphOutputs) -> None:
        self.item_scores[indices] = outputs.item_scores.float().cpu().numpy()
        for task, probs in outputs.intent_probs.items():
            self.intent_probs[task][indices] = probs.float().cpu().numpy()
        if self.intent_embedding is not None:
            self.intent_embedding[indices] = outputs.intent_embedding.float().cpu().numpy()
            self.intent_weights[indices] = outputs.intent_weights.float().cpu().numpy()

    def predictions(self) -> Predictions:
        return Predictions(self.item_scores, self.intent_probs, self.intent_embedding, self.intent_weights)
