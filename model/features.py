"""Per-interaction features: the compact row a user's history is stored as, and its embedding F_k.

A history is a 1-D numpy array of `ROW_DTYPE`, in event-time order. The stream keeps exactly these
arrays as per-user state; training, evaluation and serving all featurize through `featurize`.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from model.config import IntentRecConfig
from model.vocab import PAD, UNKNOWN, Vocabularies, release_bucket
from schemas import CatalogueEntry, PlayEvent

GENRE_SLOTS = 4  # genres kept per interaction (a title rarely has more)
ROW_DTYPE = np.dtype(
    [
        ("item", np.int32),
        ("action", np.int16),
        ("kind", np.int8),
        ("release", np.int8),
        ("device", np.int16),
        ("genres", np.int16, (GENRE_SLOTS,)),
        ("ts", np.int64),  # epoch ms
        ("watch_s", np.float32),
    ]
)
MAX_WATCH_S = 4 * 3600.0
MAX_GAP_S = 365 * 86_400.0


def featurize(event: PlayEvent, vocab: Vocabularies) -> np.ndarray:
    row = np.zeros((), dtype=ROW_DTYPE)
    row["item"] = vocab.items.lookup(event.item_id)
    row["action"] = vocab.actions.lookup(event.action)
    row["kind"] = vocab.kinds.lookup(event.kind)
    row["release"] = vocab.release.lookup(release_bucket(event.ts, event.release_ts))
    row["device"] = vocab.devices.lookup(event.device)
    genres = [vocab.genres.lookup(g) for g in event.genres[:GENRE_SLOTS]]
    row["genres"][: len(genres)] = genres
    row["ts"] = event.ts
    row["watch_s"] = event.duration_s
    return row


def featurize_all(events, vocab: Vocabularies) -> np.ndarray:
    rows = np.zeros(len(events), dtype=ROW_DTYPE)
    for i, event in enumerate(events):
        rows[i] = featurize(event, vocab)
    return rows


NO_RELEASE = np.iinfo(np.int64).min
# What an event says about the item it plays (model.intentrec.IntentMatch learns the catalogue from it).
CATALOGUE_DTYPE = np.dtype(
    [("item", np.int32), ("kind", np.int8), ("genres", np.int16, (GENRE_SLOTS,)), ("release_ts", np.int64)]
)


def catalogue_entries(rows: np.ndarray, events) -> np.ndarray:
    """One entry per event: its item's kind, genres and release time (NO_RELEASE when unknown);
    `rows` are the events featurized."""
    entries = np.zeros(len(rows), dtype=CATALOGUE_DTYPE)
    for name in ("item", "kind", "genres"):
        entries[name] = rows[name]
    entries["release_ts"] = [NO_RELEASE if event.release_ts is None else event.release_ts for event in events]
    return entries


def listed_entries(titles: Sequence[CatalogueEntry], vocab: Vocabularies) -> np.ndarray:
    """What a catalogue file says of its titles, as catalogue_entries says it of plays."""
    entries = np.zeros(len(titles), dtype=CATALOGUE_DTYPE)
    for entry, title in zip(entries, titles):
        entry["item"] = vocab.items.lookup(title.item_id)
        entry["kind"] = vocab.kinds.lookup(title.kind)
        genres = [vocab.genres.lookup(g) for g in title.genres[:GENRE_SLOTS]]
        entry["genres"][: len(genres)] = genres
        entry["release_ts"] = NO_RELEASE if title.release_ts is None else title.release_ts
    return entries


def batch_tensors(histories, length: int, left_pad: bool = False) -> dict[str, torch.Tensor]:
    """Pad histories to `length` rows, on the right (training: positions count from each history's
    start) or on the left (serving: every history's newest row is the last), and turn each field
    into a tensor; `valid` marks real rows."""
    batch = np.zeros((len(histories), length), dtype=ROW_DTYPE)
    valid = np.zeros((len(histories), length), dtype=bool)
    for b, history in enumerate(histories):
        rows = slice(length - len(history), length) if left_pad else slice(0, len(history))
        batch[b, rows] = history
        valid[b, rows] = True
    tensors = {name: torch.from_numpy(batch[name].copy()) for name in ROW_DTYPE.names}
    tensors["valid"] = torch.from_numpy(valid)
    return tensors


class FeatureEmbedding(nn.Module):
    """F_k = [item; action; kind; release bucket; device; mean of genres; log watch; log gap]."""

    def __init__(self, config: IntentRecConfig):
        super().__init__()
        c = config
        self.item = nn.Embedding(c.n_items, c.d_item, padding_idx=PAD)
        self.action = nn.Embedding(c.n_actions, c.d_small, padding_idx=PAD)
        self.kind = nn.Embedding(c.n_kinds, c.d_small, padding_idx=PAD)
        self.release = nn.Embedding(c.n_release_buckets, c.d_small, padding_idx=PAD)
        self.device = nn.Embedding(c.n_devices, c.d_small, padding_idx=PAD)
        self.genre = nn.Embedding(c.n_genres, c.d_small, padding_idx=PAD)
        self.dim = c.d_item + 5 * c.d_small + 2
        self.item_input_scale = c.item_input_scale
        if c.embedding_init_std is not None:
            with torch.no_grad():
                for table in (self.item, self.action, self.kind, self.release, self.device, self.genre):
                    nn.init.normal_(table.weight, std=c.embedding_init_std)
                    table.weight[PAD] = 0.0

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """x: model.inputs.model_inputs (gap_s: seconds since each row's previous interaction)."""
        genres = x["genres"].long()
        genre_count = (genres != PAD).sum(-1, keepdim=True).clamp(min=1)
        genre_mean = self.genre(genres).sum(-2) / genre_count
        return torch.cat(
            [
                self.item(known_items(x["item"].long(), self.item.num_embeddings)) * self.item_input_scale,
                self.action(x["action"].long()),
                self.kind(x["kind"].long()),
                self.release(x["release"].long()),
                self.device(x["device"].long()),
                genre_mean,
                scaled_log(x["watch_s"], MAX_WATCH_S).unsqueeze(-1),
                scaled_log(x["gap_s"], MAX_GAP_S).unsqueeze(-1),
            ],
            dim=-1,
        )


def known_items(items: torch.Tensor, n_items: int) -> torch.Tensor:
    """Item indices as the embedding knows them: a user's unknown-title slot (n_items and up) is the
    unknown item."""
    return torch.where(items >= n_items, UNKNOWN, items)


def slot_title(row: np.ndarray, item_id: str, titles: tuple[str, ...], held_items: np.ndarray, n_items: int,
               slots: int) -> tuple[tuple[str, ...], int | None]:  # fmt: skip
    """A user's titles the vocabulary lacks get item indices of their own after the catalogue,
    n_items + k for the user's k-th (`titles[k]`), so that the repeat pointer can point at them. Gives
    `row` (featurized from a play of `item_id`) its title's slot if the title is unknown, and returns
    the user's titles (the same tuple unless one was added) and the index of a slot taken from another
    title, whose rows must from now on read as the unknown item (None when none was).

    `held_items`: the items of the user's rows before this one that the model reads with it (its
    window), oldest first. A new title takes a free slot, else the slot of the title played least
    recently among them: so the title a user played last always has a slot, however many new titles
    the user has started since the model was trained. The stream keeps the titles beside each user's
    rows (stream.dataflow.RememberUser); `slot_history` slots an offline history the same way."""
    if row["item"] != UNKNOWN or not slots:
        return titles, None
    if item_id in titles:
        row["item"] = n_items + titles.index(item_id)
        return titles, None
    taken = None
    if len(titles) < slots:
        k, titles = len(titles), titles + (item_id,)
    else:
        last_played = np.full(slots, -1)
        held_slots = held_items.astype(np.int64) - n_items
        in_slot = (held_slots >= 0) & (held_slots < slots)
        last_played[held_slots[in_slot]] = np.flatnonzero(in_slot)  # later positions overwrite earlier ones
        k = int(last_played.argmin())
        titles = titles[:k] + (item_id,) + titles[k + 1 :]
        taken = n_items + k if last_played[k] >= 0 else None
    row["item"] = n_items + k
    return titles, taken


def slot_history(rows: np.ndarray, item_ids, n_items: int, slots: int,
                 window: int | None = None) -> tuple[np.ndarray, tuple[str, ...]]:  # fmt: skip
    """An offline history (rows of one user's plays of `item_ids`, oldest first) with its unknown
    titles slotted as the stream slots them, each row against the `window` rows before it (None: all;
    the stream: its state's context), and the titles of its slots."""
    rows, titles = rows.copy(), ()
    for n, item_id in enumerate(item_ids):
        before = rows["item"][: n] if window is None else rows["item"][max(0, n - window) : n]
        titles, taken = slot_title(rows[n], item_id, titles, before, n_items, slots)
        if taken is not None:
            earlier = rows["item"][:n]
            earlier[earlier == taken] = UNKNOWN
    return rows, titles


def scaled_log(value: torch.Tensor, maximum: float) -> torch.Tensor:
    return (torch.log1p(value.float().clamp(min=0)) / math.log1p(maximum)).clamp(max=1.0)
