"""What the forward pass reads, prepared from batched rows: the rows' index fields and watch time,
and what their int64 times give — gaps, time encodings, days since the origin and attention masks.

Training, evaluation and serving all prepare their inputs here (serving on the host, since float32
and TensorRT cannot compute the float64 phases of absolute time), so the model's one forward pass
sees the same numbers whichever path called it.
"""
from __future__ import annotations

import functools
import math

import torch

from model.config import IntentRecConfig
from model.features import MAX_GAP_S

HOUR_MS = 3_600_000.0
DAY_MS = 86_400_000.0
MAX_GAP_MS = int(MAX_GAP_S * 1000)
INDEX_FIELDS = ("item", "action", "kind", "release", "device", "genres")
# The forward pass's inputs, in the order the serving graphs take them.
MODEL_INPUTS = (*INDEX_FIELDS, "watch_s", "gap_s", "time_code", "days", "attend", "attend_short")


def model_inputs(rows: dict[str, torch.Tensor], config: IntentRecConfig) -> dict[str, torch.Tensor]:
    """MODEL_INPUTS from rows batched by model.features.batch_tensors (padded on either side: `valid`
    marks the real rows). Index fields become int32 (TensorRT has no int16 and treats int8 as
    quantized). A row whose predecessor is not in the batch starts the history: the longest gap."""
    valid, ts = rows["valid"], rows["ts"]
    previous_valid = torch.zeros_like(valid)
    previous_valid[:, 1:] = valid[:, :-1]
    gap_ms = torch.full_like(ts, MAX_GAP_MS)
    gap_ms[:, 1:] = torch.where(previous_valid[:, 1:], ts[:, 1:] - ts[:, :-1], MAX_GAP_MS)
    inputs = {name: rows[name].to(torch.int32) for name in INDEX_FIELDS}
    inputs["watch_s"] = rows["watch_s"]
    inputs["gap_s"] = torch.where(valid, gap_ms.float() / 1000.0, 0.0)
    inputs["time_code"] = time_encoding(ts, config)
    inputs["days"] = days_since_origin(ts, config.time_origin_ms)
    inputs["attend"] = attention_mask(valid, ts, config.attention_window, None)
    inputs["attend_short"] = attention_mask(valid, ts, config.attention_window, config.short_term_window_ms)
    return inputs


def time_encoding(ts: torch.Tensor, config: IntentRecConfig) -> torch.Tensor:
    """Sinusoidal encoding of absolute time in hours (d_model values), periods from one hour to
    about ten years. Every transformer adds it to its inputs: positions come from each interaction's
    own time, so a past interaction's representation never changes when a new one arrives."""
    hours = ((ts - config.time_origin_ms).double() / HOUR_MS).unsqueeze(-1)
    # Phases in float64: hours since the origin reach 1e5, too many for float32 sin().
    phases = torch.remainder(hours * _frequencies(config.d_model // 2), 2 * math.pi).float()
    return torch.cat([phases.sin(), phases.cos()], dim=-1)


@functools.cache
def _frequencies(n: int) -> torch.Tensor:
    """Angular frequencies (float64) of periods from one hour to about ten years; made once per size,
    since serving prepares inputs for every event."""
    periods = torch.logspace(0, math.log10(24 * 365 * 10), n, dtype=torch.float32)
    return (2 * math.pi / periods).double()


def days_since_origin(ts: torch.Tensor, origin_ms: int) -> torch.Tensor:
    """Days since the origin of int64 epoch-ms times, in float32 (IntentMatch's clock)."""
    return ((ts - origin_ms).double() / DAY_MS).float()


def attention_mask(valid: torch.Tensor, ts: torch.Tensor, window: int, max_age_ms: int | None) -> torch.Tensor:
    """(B, T, T) boolean mask, True where query k may attend to key j: j <= k, k - j < window,
    j is a real interaction and, if max_age_ms is given, T_k - T_j <= max_age_ms.
    Padding queries attend to themselves only, so no row is empty."""
    T = valid.shape[1]
    pos = torch.arange(T, device=valid.device)
    distance = pos.view(T, 1) - pos.view(1, T)
    allowed = (distance >= 0) & (distance < window)
    mask = allowed.unsqueeze(0) & valid.unsqueeze(1) & valid.unsqueeze(2)
    if max_age_ms is not None:
        age = ts.unsqueeze(2) - ts.unsqueeze(1)
        mask = mask & (age <= max_age_ms)
    return mask | (torch.eye(T, dtype=torch.bool, device=valid.device) & ~valid.unsqueeze(2))
