"""The item layer: from the item encoder's state after a position to p(next item).

p = (1 - g) p_explore + g p_repeat: explore is a softmax over the catalogue (each item's logit the
query's inner product with its embedding, the item table being also the input embedding, plus
IntentMatch's bonus where the predicted intent feeds the item encoder); repeat is a pointer over the
user's last L interactions (model.intentrec.ItemEncoder computes it, and the gate g, with the
query); the paper's own item layer (config.repeat_and_match off) is explore alone. Titles the
catalogue lacks sit in columns after it: each user's unknown-title slots (reached by the pointer
only) and the titles first seen in the stream (NewTitles).

How much of the catalogue it scores is what grows with the catalogue, so `ItemLayer` scores it in
one of these ways, behind one interface (`forward`):

- every item, exactly (`distribution`): evaluation, and serving a catalogue small enough;
- p(target) (`target_probability`): training, against the whole catalogue or, for large catalogues,
  against sampled negatives with the logQ correction (`Negatives`; model.training.negatives draws
  them), so that a step's cost does not grow with the catalogue;
- each target's rank (`ranks`), by a count over the catalogue in blocks rather than a distribution
  held whole: validation, and judging, at any catalogue size;
- each row's candidates (`candidate_distribution`), retrieved from an index by the serving process
  (model.serving.retrieval sets `retriever`) and rescored exactly: serving a catalogue too large to
  score whole, approximate only in what the index misses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.config import IntentRecConfig, task_sizes
from model.features import NO_RELEASE
from model.inputs import days_since_origin
from model.vocab import FIRST_REAL, PAD, RELEASE_BUCKETS, UNKNOWN

# Items scored at once when a pass over the catalogue goes in blocks (ranks, full-catalogue logsumexp).
ITEM_BLOCK = 1 << 16
RANKS_LOGITS_BYTES = 256 << 20  # ranks holds a chunk of targets' logits over the whole catalogue


@dataclass
class Intent:
    """The predicted intent the item encoder reads at its query positions (where Z feeds it)."""

    probs: dict[str, torch.Tensor]  # task -> (B, T, labels)
    days: torch.Tensor  # (B, T): the queries' times, days_since_origin
    weights: torch.Tensor  # (B, T, tasks): softmax(alpha), IntentFusion's weights

    def scale(self, task_index: int) -> torch.Tensor:
        """(B, T, 1): how much a task's direct term counts at each position, tasks x its weight."""
        return self.weights[..., task_index : task_index + 1] * self.weights.shape[-1]

    def newest(self) -> "Intent":
        """Only the last position, kept as a length-1 time axis."""
        return Intent({task: p[:, -1:] for task, p in self.probs.items()}, self.days[:, -1:], self.weights[:, -1:])

    def at(self, rows: torch.Tensor, positions: torch.Tensor) -> "Intent":
        """The (row, position) pairs (n,), each as a row of one position."""
        return Intent({task: p[rows, positions].unsqueeze(1) for task, p in self.probs.items()},
                      self.days[rows, positions].unsqueeze(1), self.weights[rows, positions].unsqueeze(1))



class IntentMatch(nn.Module):
    """How well each catalogue item fits the predicted intent, a bonus to the explore logits where Z
    feeds the item encoder (our addition, like the repeat pointer):
        w_kind log p(the item's kind) + w_genre mean over its genres of log p(genre)
        + w_release log p(the item's release bucket at the time of the query).
    Z reaches the catalogue only through the item encoder's state; this lets a confident intent
    ("a title released this month") rank every matching item up at once, including new titles
    played too rarely to have a good embedding. The items' kinds, genres and release days come from
    the training log (`learn`); unknown ones get no bonus."""

    TASKS = ("kind", "genre", "release")
    ATTRIBUTE_TASKS = ("kind", "genre")  # fixed per item: one matrix product scores them all

    def __init__(self, config: IntentRecConfig):
        super().__init__()
        self.tasks = tuple(task for task in self.TASKS if task in config.intent_tasks)
        self.task_index = tuple(config.intent_tasks.index(task) for task in self.tasks)  # among Intent.weights
        self.attribute_tasks = tuple(task for task in self.ATTRIBUTE_TASKS if task in self.tasks)
        self.origin_ms = config.time_origin_ms
        self.attribute_sizes = tuple(task_sizes(config)[task] for task in self.attribute_tasks)
        # Per item: one-hot kind, then genres summing to 1 (zeros where unknown).
        self.register_buffer("item_attributes", torch.zeros(config.n_items, sum(self.attribute_sizes)))
        self.register_buffer("item_release_day", torch.full((config.n_items,), math.inf))  # days since origin_ms
        # release_bonus gives bucket 0 below the first bound (the -inf age of an unknown release), then
        # one bucket per RELEASE_BUCKETS entry.
        bounds = [-1e12] + [upper for _, upper in RELEASE_BUCKETS[:-1]]
        self.register_buffer("age_bounds", torch.tensor(bounds), persistent=False)
        self.weights = nn.Parameter(torch.zeros(len(self.tasks)))

    def forward(self, intent: "Intent", attributes: torch.Tensor | None = None,
                release_days: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """(B, T, N) logit bonus from the predicted intent of each position, for the catalogue's items
        (N = n_items) or for other titles given by their `attributes` (N, attribute_rows) and
        `release_days` (N,), or (B, N, ...) for titles of each row's own. Each task's term counts w_task
        times its intent weight for the position (times the number of tasks: 1 where the weights are
        uniform)."""
        if attributes is None:
            attributes, release_days = self.item_attributes, self.item_release_day
        bonus = 0.0
        if self.attribute_tasks:
            bonus = self.attribute_query(intent) @ attributes.mT
        if "release" in self.tasks:
            real = self.weighted(intent, "release")[..., FIRST_REAL:]
            by_bucket = torch.cat([torch.zeros_like(real[..., :1]), real], dim=-1)  # bucket 0: unknown
            bonus = bonus + self.release_bonus(by_bucket, intent.days, release_days)
        return bonus

    def weighted(self, intent: "Intent", task: str) -> torch.Tensor:
        """A task's term per label (B, T, labels): w_task x the task's scale x log p(label)."""
        n = self.tasks.index(task)
        return self.weights[n] * intent.scale(self.task_index[n]) * torch.log(intent.probs[task].clamp(min=1e-6))

    def attribute_query(self, intent: "Intent") -> torch.Tensor:
        """(B, T, attribute_rows): the kind and genre terms, whose inner product with an item's
        attribute row is its bonus for them (so an index over [embedding; attributes] finds it)."""
        return torch.cat([self.weighted(intent, task) for task in self.attribute_tasks], dim=-1)

    def release_bonus(self, by_bucket: torch.Tensor, days: torch.Tensor, release_days: torch.Tensor) -> torch.Tensor:
        """(B, T, N): the value `by_bucket` (B, T, buckets; bucket 0, an unknown release, is 0) gives
        the bucket of every item's age at each query time: for each bound the age has passed, the step
        from one bucket's value to the next's (an item without a release date, release day +inf, has
        age -inf and passes none). A sum of comparisons, not a gather: no (B, T, N) index tensor, whose
        int64 at a million items and 256 queries would be 2 GB (and 8 GB while counting the bounds),
        and compilers fuse comparisons into one loop."""
        age_days = days.unsqueeze(-1) - release_days.unsqueeze(-2)
        steps = by_bucket.diff(dim=-1).unsqueeze(-2)  # (B, T, 1, buckets - 1)
        bonus = torch.zeros_like(age_days)
        for k in range(len(self.age_bounds)):
            bonus = bonus + (age_days > self.age_bounds[k]) * steps[..., k]
        return bonus

    def attribute_rows(self, kinds: torch.Tensor, genres: torch.Tensor, rows: torch.Tensor | None = None,
                       n_rows: int | None = None) -> torch.Tensor:  # fmt: skip
        """What IntentMatch scores of a title, from plays' kinds (N,) and genres (N, GENRE_SLOTS): a
        one-hot kind, then genres summing to 1 (zeros where unknown). With `rows` (N,), play n is
        of title rows[n] among `n_rows`, and a title's labels are those of any of its plays."""
        blocks = []
        for task, size in zip(self.attribute_tasks, self.attribute_sizes):
            labels = kinds.unsqueeze(-1) if task == "kind" else genres
            block = F.one_hot(labels.long(), size).amax(-2).float()
            if rows is not None:
                block = block.new_zeros(n_rows, size).index_add_(0, rows, block).clamp_(max=1.0)
            block[:, :FIRST_REAL] = 0.0  # padding, unknown
            blocks.append(block / block.sum(1, keepdim=True).clamp(min=1.0))
        return torch.cat(blocks, dim=1) if blocks else torch.zeros(len(kinds) if rows is None else n_rows, 0)

    @torch.no_grad()
    def learn(self, entries: np.ndarray) -> None:
        """Each item's kind, genres and release day from catalogue entries
        (model.features.catalogue_entries). An item's labels are those of any of its entries; the
        release day comes from any entry that has one (a title has one release date)."""
        items = torch.from_numpy(entries["item"].astype(np.int64))
        kinds, genres = (torch.from_numpy(entries[name].astype(np.int64)) for name in ("kind", "genres"))
        if self.attribute_tasks:
            self.item_attributes.copy_(self.attribute_rows(kinds, genres, items, len(self.item_attributes)))
        release_ts = torch.from_numpy(entries["release_ts"].copy())
        known = release_ts != NO_RELEASE
        self.item_release_day[items[known]] = days_since_origin(release_ts[known], self.origin_ms)


@dataclass
class NewTitles:
    """Titles the vocabulary lacks that the stream has seen played (model.serving.new_titles), C
    columns after the catalogue and the users' slots, for the newest position of each row. They take
    `share` of the explore distribution (the part of the last week's plays that were of new
    titles), divided among them by their plays that week times how well each fits the query: the
    logit of an embedding derived from its kind and genres, plus IntentMatch's bonus where Z feeds
    the item encoder. A title with no play that week (and an unused column) gets nothing."""

    embeddings: torch.Tensor  # (C, d_item)
    kinds: torch.Tensor  # (C,) kind indices
    genres: torch.Tensor  # (C, GENRE_SLOTS) genre indices
    release_days: torch.Tensor  # (C,) days since the origin, +inf where unknown
    log_recent_plays: torch.Tensor  # (B, C) log of each title's plays in the week up to each row's query
    share: torch.Tensor  # (B,) the part of that week's plays that were of new titles

    def distribution(self, queries: torch.Tensor, intent_match: "IntentMatch | None",
                     intent: Intent | None) -> torch.Tensor:  # fmt: skip
        """(B, 1, C): p(new title | explore) for queries in item space (B, 1, d_item), summing to
        `share` (0 where no title was played that week)."""
        logits = queries @ self.embeddings.T + self.log_recent_plays.unsqueeze(1)
        if not logits.shape[-1]:  # a closed catalogue
            return logits
        if intent_match is not None:
            attributes = intent_match.attribute_rows(self.kinds, self.genres)
            logits = logits + intent_match(intent, attributes, self.release_days)
        # A softmax that gives 0, not NaN, where every title is -inf.
        top = logits.amax(-1, keepdim=True)
        weights = torch.exp(logits - torch.where(torch.isfinite(top), top, 0.0))
        return weights / weights.sum(-1, keepdim=True).clamp(min=1e-30) * self.share.view(-1, 1, 1)


@dataclass
class ItemState:
    """What the item layer reads after each query position (B rows, T positions): the query in item
    space, the repeat pointer's weights over the P positions it may read and their items, the gate,
    and the predicted intent where it feeds the item encoder."""

    queries: torch.Tensor  # (B, T, d_item)
    pointer: torch.Tensor | None  # (B, T, P); None for the paper's item layer
    key_items: torch.Tensor  # (B, P)
    gate: torch.Tensor | None  # (B, T, 1)
    intent: Intent | None

    def at(self, rows: torch.Tensor, positions: torch.Tensor) -> "ItemState":
        """The state at the given (row, position) pairs (n,), each its own row of one position."""
        return ItemState(
            self.queries[rows, positions].unsqueeze(1),
            None if self.pointer is None else self.pointer[rows, positions].unsqueeze(1),
            self.key_items[rows],
            None if self.gate is None else self.gate[rows, positions].unsqueeze(1),
            None if self.intent is None else self.intent.at(rows, positions),
        )


@dataclass
class Negatives:
    """Items sampled to stand for the catalogue in a training step's softmax (every target of the
    step among them): `items` (M,) sorted and distinct, and for each the log of how many times it was
    drawn over how many times it was expected to be, the logQ correction of a sampled softmax."""

    items: torch.Tensor  # (M,) int64
    log_weight: torch.Tensor  # (M,)


@dataclass
class Targets:
    """Training's question: p(items) after each position, from the whole catalogue's softmax or,
    with `negatives`, from a sampled one."""

    items: torch.Tensor  # (B, T) item indices
    negatives: Negatives | None = None


class Retriever(Protocol):
    def __call__(self, state: ItemState, item_embeddings: torch.Tensor) -> "Candidates": ...


@dataclass
class Candidates:
    """Each row's part of the catalogue to score (model.serving.retrieval): `items` (B, K) sorted,
    padding and unknown first (where the pointer's weight on them lands), an item possibly repeated
    (it counts once, at its first column); `sample` (S,) catalogue items drawn uniformly, from which
    the softmax's sum over the items not retrieved is estimated."""

    items: torch.Tensor  # (B, K) int64
    sample: torch.Tensor  # (S,) int64


class ItemLayer(nn.Module):
    def __init__(self, config: IntentRecConfig):
        super().__init__()
        self.n_items, self.unknown_slots = config.n_items, config.unknown_slots
        self.intent_match = IntentMatch(config) if config.repeat_and_match and config.feeds_intent else None
        # Serving a catalogue too large to score whole sets this (model.serving.retrieval): the
        # distribution then covers each row's retrieved candidates only, rescored exactly.
        self.retriever: Retriever | None = None

    def forward(self, state: ItemState, item_embeddings: torch.Tensor, targets: Targets | None = None,
                new_titles: NewTitles | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """p(targets) (B, T) with `targets`; else the distribution over the catalogue, the slots and
        the `new_titles` (B, T, n_items + unknown_slots + C) or, with a retriever, over each row's
        candidates instead of the catalogue (B, T, K + unknown_slots + C). Second: the catalogue item
        of each of the first columns (B, K), or None where they are the catalogue itself."""
        if targets is not None:
            return self.target_probability(state, item_embeddings, targets), None
        if self.retriever is None:
            return self.distribution(state, item_embeddings, new_titles), None
        candidates = self.retriever(state, item_embeddings)
        return self.candidate_distribution(state, item_embeddings, candidates, new_titles), candidates.items

    def logits(self, state: ItemState, item_embeddings: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Explore logits (B, T, N) of every catalogue item (padding and unknown at -inf) or, given
        `items` (N,) or (B, N) (each row's own), of those."""
        if items is None:
            logits = state.queries @ item_embeddings.T
            if self.intent_match is not None:
                logits = logits + self.intent_match(state.intent)
            logits[..., PAD] = logits[..., UNKNOWN] = float("-inf")
            return logits
        # As an embedding lookup: training's gradient then holds the rows read, not the whole table.
        logits = state.queries @ F.embedding(items, item_embeddings, sparse=True).mT
        if self.intent_match is not None:
            match = self.intent_match
            logits = logits + match(state.intent, match.item_attributes[items], match.item_release_day[items])
        return logits

    def distribution(self, state: ItemState, item_embeddings: torch.Tensor,
                     new_titles: NewTitles | None = None) -> torch.Tensor:  # fmt: skip
        """The mixture over every column, computed in place (for inference)."""
        explore = torch.softmax(self.logits(state, item_embeddings), dim=-1)
        return self._mixed(state, self._beside(state, explore, new_titles), state.key_items)

    def candidate_distribution(self, state: ItemState, item_embeddings: torch.Tensor, candidates: Candidates,
                               new_titles: NewTitles | None = None) -> torch.Tensor:  # fmt: skip
        """`distribution` for each row's candidates in place of the catalogue. Each candidate's explore
        logit is exact; the softmax's sum over the items not retrieved is estimated from the uniform
        sample (their mean exp(logit) times how many there are), so the explore probabilities, and
        their balance with the pointer's, are the exact ones up to that estimate."""
        items = candidates.items
        counted = (items >= FIRST_REAL) & (items < self.n_items)
        counted[:, 1:] &= items[:, 1:] != items[:, :-1]
        logits = self.logits(state, item_embeddings, items).masked_fill(~counted.unsqueeze(1), float("-inf"))
        sample = candidates.sample
        column = torch.searchsorted(items, sample.expand(len(items), -1).contiguous()).clamp(max=items.shape[1] - 1)
        unretrieved = (items.gather(-1, column) != sample).unsqueeze(1)  # (B, 1, S)
        sample_logits = self.logits(state, item_embeddings, sample).masked_fill(~unretrieved, float("-inf"))
        rest = (self.n_items - FIRST_REAL - counted.sum(-1, keepdim=True)).unsqueeze(1)  # (B, 1, 1)
        sampled = unretrieved.sum(-1, keepdim=True)
        log_rest = torch.logsumexp(sample_logits, -1, keepdim=True) + (rest / sampled.clamp(min=1)).log()
        log_rest = log_rest.masked_fill((rest == 0) | (sampled == 0), float("-inf"))  # nothing left, or nothing to tell
        log_z = torch.logaddexp(torch.logsumexp(logits, -1, keepdim=True), log_rest)
        explore = self._beside(state, (logits - log_z).exp(), new_titles)
        key_items = state.key_items.long()
        in_catalogue = key_items < self.n_items
        key_columns = torch.where(in_catalogue, torch.searchsorted(items, key_items.where(in_catalogue, 0)),
                                  items.shape[1] + key_items - self.n_items)  # fmt: skip
        mixed = self._mixed(state, explore, key_columns)
        # What the pointer gave padding and unknown rows is never ranked (the exact path's columns 0 and 1).
        mixed[..., : items.shape[1]].masked_fill_((items < FIRST_REAL).unsqueeze(1), 0.0)
        return mixed

    def _beside(self, state: ItemState, explore: torch.Tensor, new_titles: NewTitles | None) -> torch.Tensor:
        """The explore probabilities of the catalogue (or the candidates), then the users' unknown-title
        slots' (0: only the pointer reaches them), then the new titles' share of explore."""
        slots = explore.new_zeros(*explore.shape[:-1], self.unknown_slots)
        if new_titles is None:
            return torch.cat([explore, slots], dim=-1)
        new = new_titles.distribution(state.queries, self.intent_match, state.intent)
        return torch.cat([explore * (1 - new_titles.share.view(-1, 1, 1)), slots, new], dim=-1)

    @staticmethod
    def _mixed(state: ItemState, explore: torch.Tensor, key_columns: torch.Tensor) -> torch.Tensor:
        """(1 - g) explore + g x the pointer's weights, each landing on its position's column (B, P)."""
        if state.pointer is None:
            return explore
        gate = state.gate
        return explore.mul_(1 - gate).scatter_add_(-1, pointer_slots(key_columns, state.pointer), state.pointer * gate)

    def target_probability(self, state: ItemState, item_embeddings: torch.Tensor, targets: Targets) -> torch.Tensor:
        """p(target) (B, T) without the (B, T, n_items) mixture: the target's explore probability,
        from the whole catalogue's softmax or the sampled one, mixed with its pointer weight."""
        items = targets.items
        if targets.negatives is None:
            log_explore = torch.log_softmax(self.logits(state, item_embeddings), dim=-1)
            log_explore = log_explore.gather(-1, items.unsqueeze(-1)).squeeze(-1)
        else:
            log_explore = self.sampled_log_softmax(state, item_embeddings, items, targets.negatives)
        return self.mix(state, log_explore.exp(), items)

    def sampled_log_softmax(self, state: ItemState, item_embeddings: torch.Tensor, items: torch.Tensor,
                            negatives: Negatives) -> torch.Tensor:  # fmt: skip
        """log p_explore(target) (B, T) with the catalogue's partition function estimated from the
        sampled items: exp(target's logit) + the sum over the others of exp(logit + log weight)
        (importance weights: each item counted once per draw over its expected draws). A position
        never counts its own target among the negatives (an accidental hit)."""
        logits = self.logits(state, item_embeddings, negatives.items)  # (B, T, M)
        column = torch.searchsorted(negatives.items, items.clamp(min=FIRST_REAL)).clamp(max=len(negatives.items) - 1)
        target_logit = logits.gather(-1, column.unsqueeze(-1)).squeeze(-1)
        others = (logits + negatives.log_weight).scatter(-1, column.unsqueeze(-1), float("-inf"))
        return target_logit - torch.logaddexp(target_logit, torch.logsumexp(others, dim=-1))

    def mix(self, state: ItemState, explore: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(1 - g) explore + g x the pointer's weight on each position's `items` (B, T)."""
        if state.pointer is None:
            return explore
        gate = state.gate[..., 0]
        repeat = (state.pointer * (state.key_items.unsqueeze(1) == items.unsqueeze(-1))).sum(-1)
        return (1 - gate) * explore + gate * repeat

    @torch.no_grad()
    def ranks(self, state: ItemState, item_embeddings: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Each target's 1-based rank (n,) in the distribution over the catalogue and the slots (no
        new titles) at n positions (state: n rows of one position; items (n, 1)): how many columns
        score at least as much as the target, counted over the catalogue in blocks of ITEM_BLOCK
        items, so memory does not grow with it. A target the vocabulary lacks ranks last (the number
        of columns), as model.training.evaluate.target_ranks ranks it. The targets go in chunks whose
        logits over the whole catalogue fit RANKS_LOGITS_BYTES, each block's computed once for the
        two passes (the softmax's sum, then the count)."""
        chunk = max(1, RANKS_LOGITS_BYTES // (4 * self.n_items))
        every = torch.arange(len(items))
        return torch.cat([self._ranks(state.at(rows, torch.zeros_like(rows)), item_embeddings, items[rows])
                          for rows in every.split(chunk)]) if len(items) else torch.zeros(0, dtype=torch.int64)  # fmt: skip

    def _ranks(self, state: ItemState, item_embeddings: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        n, slots = len(items), self.unknown_slots
        log_z = torch.full((n, 1), float("-inf"))
        target_logit = torch.zeros(n, 1)
        blocks = self._blocks()
        logits_by_block = [self.logits(state, item_embeddings, block)[:, 0] for block in blocks]
        for block, logits in zip(blocks, logits_by_block):
            log_z = torch.logaddexp(log_z, torch.logsumexp(logits, dim=-1, keepdim=True))
            inside = (items >= block[0]) & (items <= block[-1])
            column = (items - block[0]).clamp(0, len(block) - 1)
            target_logit = torch.where(inside, logits.gather(-1, column), target_logit)
        known = (items >= FIRST_REAL) & (items < self.n_items)
        explore_target = torch.where(known, (target_logit - log_z).exp(), 0.0)
        p_target = self.mix(state, explore_target, items)  # (n, 1)
        higher = torch.zeros(n, dtype=torch.int64)  # other columns scoring at least as much as the target
        slot_block = torch.arange(self.n_items, self.n_items + slots)
        for block, explore in [*zip(blocks, ((logits - log_z).exp() for logits in logits_by_block)),
                               (slot_block, torch.zeros(n, slots))]:  # fmt: skip
            mixed = self._mixed_block(state, explore, block)
            higher += ((mixed >= p_target) & (block != items)).sum(-1)  # the target's own: counted once below
        return torch.where(known[:, 0], higher + 1, self.n_items + slots)

    def _blocks(self):
        return torch.arange(FIRST_REAL, self.n_items).split(ITEM_BLOCK)

    @staticmethod
    def _mixed_block(state: ItemState, explore: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """(n, len(block)): the mixture over a contiguous block of columns, from their explore part."""
        if state.pointer is None:
            return explore
        gate = state.gate[:, 0]  # (n, 1)
        pointer, key_items = state.pointer[:, 0], state.key_items.long()  # (n, P)
        inside = (key_items >= block[0]) & (key_items <= block[-1])
        repeat = torch.zeros_like(explore).scatter_add_(-1, (key_items - block[0]).clamp(0, len(block) - 1),
                                                        torch.where(inside, pointer, 0.0))  # fmt: skip
        return (1 - gate) * explore + gate * repeat


def pointer_slots(key_items: torch.Tensor, pointer: torch.Tensor) -> torch.Tensor:
    """The catalogue index each pointer weight lands on, shaped like the pointer (B, T, P)."""
    B, T, P = pointer.shape
    return key_items.long().unsqueeze(1).expand(B, T, P)
