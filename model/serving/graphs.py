"""The two graphs of incremental inference, over plain tensors, which the backends
(model.serving.backends) run eagerly or compile. Both run IntentRec's own forward pass with a Cache:

- WindowGraph: a left-padded window of rows (no cached positions), giving the predictions after the
  last row and what every row leaves in a cache. It fills a user's cache (a first event, a cache
  miss, a late event inserted in the middle), and is the full recomputation when caching is off.
- StepGraph: one new row per user, after the cached rows of the user's last L-1 interactions.

Their inputs are model.inputs.MODEL_INPUTS, prepared on the host (model.serving.host_inputs); the
step graph then takes the cached rows' items and distances; both then take the tables of the titles
first seen in the stream (NEW_TITLE_INPUTS, model.serving.new_titles), and the step graph last the
cached keys/values and pointer keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from model.config import IntentRecConfig
from model.inputs import MODEL_INPUTS
from model.intentrec import Cache, IntentRec
from model.item_layer import NewTitles

# The titles' tables (the first four: NewTitleRegistry.width rows), then each row's (batch-major).
NEW_TITLE_INPUTS = ("new_title_embeddings", "new_title_kinds", "new_title_genres", "new_title_release_days",
                    "new_title_log_recent_plays", "new_title_share")  # fmt: skip
NEW_TITLE_TABLES = 4


def graph_outputs(model: IntentRec, inputs: Sequence[torch.Tensor], new_titles: NewTitles,
                  cache: Cache) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """The forward pass over left-padded rows, as the tuple split_outputs reads: the next-item
    distribution and the catalogue item of each of its first columns (B, K; K = 0 where they are the
    catalogue), the intent probabilities of each task, Z and the intent weights, all after the last
    row; then what the rows leave in a cache: keys/values (kv_cache.keys_values_shape(B, T)) and
    pointer keys (B, T, d_model)."""
    out = model(dict(zip(MODEL_INPUTS, inputs)), newest=True, cache=cache, new_titles=new_titles)
    columns = out.item_columns
    if columns is None:
        columns = torch.zeros((out.item_probs.shape[0], 0), dtype=torch.int64, device=out.item_probs.device)
    intents = [p[:, -1] for p in out.intent_probs.values()]
    if out.intent_embedding is not None:
        intents += [out.intent_embedding[:, -1], out.intent_weights[:, -1]]
    return (out.item_probs, columns, *intents, torch.stack(cache.keys_values), cache.pointer_keys)


class WindowGraph(nn.Module):
    """The forward pass over a left-padded window of rows (no cached ones); masks are (B, T, T)."""

    def __init__(self, model: IntentRec):
        super().__init__()
        self.model = model

    def forward(
        self, item, action, kind, release, device, genres, watch_s, gap_s, time_code, days, attend, attend_short,
        new_title_embeddings, new_title_kinds, new_title_genres, new_title_release_days, new_title_log_recent_plays,
        new_title_share,
    ):  # fmt: skip
        inputs = (item, action, kind, release, device, genres, watch_s, gap_s, time_code, days, attend, attend_short)
        new_titles = NewTitles(new_title_embeddings, new_title_kinds, new_title_genres, new_title_release_days,
                               new_title_log_recent_plays, new_title_share)  # fmt: skip
        return graph_outputs(self.model, inputs, new_titles, Cache())


class StepGraph(nn.Module):
    """One new row per user (T = 1) after its L-1 cached rows; masks are (B, 1, L)."""

    def __init__(self, model: IntentRec):
        super().__init__()
        self.model = model

    def forward(
        self, item, action, kind, release, device, genres, watch_s, gap_s, time_code, days, attend, attend_short,
        past_items, past_distances,
        new_title_embeddings, new_title_kinds, new_title_genres, new_title_release_days, new_title_log_recent_plays,
        new_title_share,
        past_keys_values, past_pointer_keys,
    ):  # fmt: skip
        inputs = (item, action, kind, release, device, genres, watch_s, gap_s, time_code, days, attend, attend_short)
        new_titles = NewTitles(new_title_embeddings, new_title_kinds, new_title_genres, new_title_release_days,
                               new_title_log_recent_plays, new_title_share)  # fmt: skip
        cache = Cache(past_keys_values, past_pointer_keys, past_items, past_distances)
        return graph_outputs(self.model, inputs, new_titles, cache)


@dataclass
class GraphOutputs:
    item_scores: torch.Tensor  # (B, n_outputs) p(next item)
    item_columns: torch.Tensor | None  # (B, K): the retrieved candidates the first K columns score; None: the catalogue
    intent_probs: dict[str, torch.Tensor]
    intent_embedding: torch.Tensor | None
    intent_weights: torch.Tensor | None
    keys_values: torch.Tensor  # keys_values_shape(B, T)
    pointer_keys: torch.Tensor  # (B, T, d_model)


def split_outputs(config: IntentRecConfig, outputs: Sequence[torch.Tensor]) -> GraphOutputs:
    tasks = config.intent_tasks
    item_scores, columns, *middle, keys_values, pointer_keys = outputs
    columns = columns if columns.shape[1] else None
    if not tasks:
        return GraphOutputs(item_scores, columns, {}, None, None, keys_values, pointer_keys)
    probs = dict(zip(tasks, middle[: len(tasks)]))
    z, weights = middle[len(tasks) :]
    return GraphOutputs(item_scores, columns, probs, z, weights, keys_values, pointer_keys)
