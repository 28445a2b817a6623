"""The graphs' inputs, prepared on the host from user histories (model.inputs.model_inputs) and
moved to the scoring device in one copy."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from model.config import IntentRecConfig
from model.features import batch_tensors
from model.inputs import INDEX_FIELDS, MODEL_INPUTS, days_since_origin, model_inputs, time_encoding
from model.serving.kv_cache import Ring
from model.serving.new_titles import move_slots


@dataclass
class HostBatch:
    """A graph's host-side inputs as numpy arrays, and each row's item, time and validity."""

    inputs: list[np.ndarray]
    items: np.ndarray  # (B, T) int32
    ts: np.ndarray  # (B, T) int64
    valid: np.ndarray  # (B, T) bool


def window_batch(histories: Sequence[np.ndarray], length: int, config: IntentRecConfig,
                 slot_columns: np.ndarray | None = None) -> HostBatch:  # fmt: skip
    """Histories left-padded to `length` rows, so that every user's newest row is the last one. The
    oldest row of each counts as the start of the history (the longest gap), as in Scorer.predict.
    `slot_columns`: where each history's slots send their pointer weight (new_titles.move_slots)."""
    rows = batch_tensors(histories, length, left_pad=True)
    move_slots(rows["item"].numpy(), slot_columns, config.n_items)
    with torch.inference_mode():
        inputs = model_inputs(rows, config)
    arrays = [inputs[name].numpy() for name in MODEL_INPUTS]
    return HostBatch(arrays, arrays[0], rows["ts"].numpy(), rows["valid"].numpy())


def step_batch(rows: np.ndarray, previous_ts: np.ndarray, cached: Ring, config: IntentRecConfig,
               slot_columns: np.ndarray | None = None) -> HostBatch:  # fmt: skip
    """One new row per user (rows: (B,)) after its cached rows; previous_ts: the newest cached time
    of each user. Ends with the cached rows' items and how many interactions before the new row
    each is (1 for the newest cached, L-1 for the oldest; each ring's oldest is at `positions`).
    `slot_columns`: as in window_batch."""
    rows = rows.reshape(-1, 1)
    ts = rows["ts"].copy()
    gap_s = (ts - previous_ts.reshape(-1, 1)).astype(np.float32) / np.float32(1000.0)
    itself = np.ones((len(rows), 1), dtype=bool)
    # The cached rows are the user's last L-1, all within the attention window.
    recent = cached.valid & (ts - cached.ts <= config.short_term_window_ms)
    attend = np.concatenate([cached.valid, itself], axis=1)[:, None, :]
    attend_short = np.concatenate([recent, itself], axis=1)[:, None, :]
    ts_t = torch.from_numpy(ts)
    with torch.inference_mode():
        time_code = time_encoding(ts_t, config).numpy()
    days = days_since_origin(ts_t, config.time_origin_ms).numpy()
    fields = [rows[name].astype(np.int32) for name in INDEX_FIELDS]
    inputs = [*fields, rows["watch_s"], gap_s, time_code, days, attend, attend_short]
    window = cached.items.shape[1]
    distances = (cached.positions[:, None] - 1 - np.arange(window)) % window + 1
    move_slots(fields[0], slot_columns, config.n_items)
    move_slots(cached.items, slot_columns, config.n_items)  # the ring's own copy (KVCache.ring)
    return HostBatch([*inputs, cached.items, distances.astype(np.int32)], inputs[0], ts, itself)


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
