"""Training: next-item cross-entropy (each target alike, or weighted by watch time as in the paper:
TrainConfig.loss_weighting), plus lambda x the intent-task losses.

Split per user, in time order (model.training.validation): the last interaction is held out for
testing, the last 5% before it (TrainConfig.validation_share, at least one) for validation (early
stopping, the epoch kept); everything earlier is training data, and only it makes the vocabularies
and what IntentMatch learns of the catalogue.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.checkpoint import save_checkpoint
from model.config import IntentRecConfig, TrainConfig, variant_overrides
from model.training.validation import Validation, held_out
from model.features import CATALOGUE_DTYPE, ROW_DTYPE, batch_tensors, catalogue_entries, featurize_all, listed_entries
from model.inputs import model_inputs
from model.intentrec import IntentRec
from model.item_layer import Targets
from model.training.negatives import NegativeSampler, uses_sampled_softmax
from model.training.optimizer import ROW_BY_ROW_FROM_ITEMS, Optimizer
from model.playlogs.files import LogError, read_catalogue, read_user_sequences
from model.vocab import FIRST_REAL, PAD, UNKNOWN, Vocabularies
from schemas import CatalogueEntry

WATCH_FLOOR_S = 60.0  # d_k = watch time + one minute, so a zero-length play still counts a little
MOST_PLAYED = 128  # the training's most played items a checkpoint records: retrieval's candidates for everyone


@dataclass
class TrainResult:
    model_dir: Path
    epochs: int
    best_epoch: int
    best_validation_ndcg: float
    wall_s: float
    train_events: int  # the events the saved model was trained on
    validation_targets: int


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_rows(log_path, vocab: Vocabularies | None = None, until_ts: int | None = None):
    """Read a log into featurized per-user arrays (fitting the vocabularies when none are given)."""
    return featurize_sequences(read_user_sequences(log_path, until_ts=until_ts), vocab)


def featurize_sequences(sequences: dict[str, list], vocab: Vocabularies | None = None):
    """Per-user event lists as featurized arrays, and the vocabularies (fitted when none are given)."""
    if vocab is None:
        vocab = Vocabularies.fit(e for events in sequences.values() for e in events)
    return {user: featurize_all(events, vocab) for user, events in sequences.items()}, vocab


def learnt_catalogue(sequences: dict[str, list], rows_by_user: dict[str, np.ndarray]) -> np.ndarray:
    """What the training log says of the items it plays (model.features.catalogue_entries)."""
    entries = [catalogue_entries(rows_by_user[user], events) for user, events in sequences.items()]
    return np.concatenate(entries) if entries else np.zeros(0, dtype=CATALOGUE_DTYPE)


def chunk_spans(n: int, chunk_len: int, warmup: int) -> list[tuple[int, int, int]]:
    """Cut a sequence of n interactions into (start, end, loss_from) windows. Consecutive windows
    overlap by `warmup` interactions that only give context, so every position is trained once."""
    spans = [(0, min(n, chunk_len), 0)]
    while spans[-1][1] < n:
        start = spans[-1][1] - warmup
        spans.append((start, min(n, start + chunk_len), warmup))
    return spans


def training_windows(rows_by_user: dict[str, np.ndarray], chunk_len: int, warmup: int):
    """(rows, loss_from, targets) windows of each user's training rows; targets[p] is the row after
    position p (padding at the end)."""
    windows = []
    for train in rows_by_user.values():
        if len(train) < 2:
            continue
        following = np.zeros(len(train), dtype=ROW_DTYPE)
        following[:-1] = train[1:]
        for start, end, loss_from in chunk_spans(len(train), chunk_len, warmup):
            windows.append((train[start:end], loss_from, following[start:end]))
    return windows


def intent_targets(task: str, targets: dict[str, torch.Tensor], n_labels: int):
    """Labels of the next interaction for one task, and which positions have one."""
    if task == "genre":
        genres = targets["genres"].long()
        multi_hot = torch.zeros(*genres.shape[:2], n_labels)
        multi_hot.scatter_(-1, genres, 1.0)
        multi_hot[..., PAD] = multi_hot[..., UNKNOWN] = 0.0
        return multi_hot, multi_hot.sum(-1) > 0
    labels = targets[task].long()
    return labels, labels >= FIRST_REAL


def loss_of_batch(model: IntentRec, batch, loss_weighting: str = TrainConfig.loss_weighting,
                  sampler: NegativeSampler | None = None):  # fmt: skip
    """The batch's loss: next-item cross-entropy (against the whole catalogue, or with `sampler`
    against sampled negatives) plus lambda x the intent losses."""
    rows, loss_from, following = batch
    length = max(len(r) for r in rows)
    x = batch_tensors(rows, length)
    targets = batch_tensors(following, length)
    in_loss = targets["valid"] & (targets["item"] >= FIRST_REAL)
    positions = torch.arange(length).unsqueeze(0)
    in_loss &= positions >= torch.tensor(loss_from).unsqueeze(1)

    items = targets["item"].long()
    negatives = sampler(items[in_loss]) if sampler is not None else None
    out = model(model_inputs(x, model.config), targets=Targets(items, negatives))
    # The floor keeps log() and its gradient finite where the mixture gives a target nothing.
    item_ce = -torch.log(out.item_probs[in_loss].clamp(min=1e-30))
    if loss_weighting == "watch":
        weight = targets["watch_s"][in_loss] + WATCH_FLOOR_S  # normalised below: only ratios count
    else:
        weight = torch.ones_like(item_ce)
    loss = (weight * item_ce).sum() / weight.sum()

    for task, logits in out.intent_logits.items():
        labels, has_label = intent_targets(task, targets, logits.shape[-1])
        chosen = in_loss & has_label
        if not chosen.any():
            continue
        if task == "genre":  # multi-label: the paper's sum of a binary cross-entropy per genre
            real = slice(FIRST_REAL, None)
            bce = F.binary_cross_entropy_with_logits(logits[chosen][:, real], labels[chosen][:, real], reduction="none")
            task_loss = bce.sum(-1).mean()
        else:
            task_loss = F.cross_entropy(logits[chosen], labels[chosen])
        loss = loss + model.config.intent_loss_weight * task_loss
    return loss


def train_model(
    log_path,
    out_dir,
    variant: str = "V3",
    until_ts: int | None = None,
    train_config: TrainConfig = TrainConfig(),
    model_overrides: dict | None = None,
    progress: bool = True,
    catalogue_path=None,
) -> TrainResult:
    """Train IntentRec on a play log and save the checkpoint to out_dir: the number of epochs is
    chosen on the validation targets (the best epoch by NDCG@10, with early stopping), then, with
    TrainConfig.refit, a model is trained that many epochs on every event but the test targets (the
    most recent plays are what a deployed model most needs); without it, the selection run's best
    epoch is kept. `catalogue_path`: a catalogue file (model.playlogs.files.read_catalogue) whose
    titles, played or not, the model ranks too, with what it says of them."""
    started = time.perf_counter()
    sequences = read_user_sequences(log_path, until_ts=until_ts)
    catalogue = list(read_catalogue(catalogue_path)) if catalogue_path is not None else []
    splits = {user: held_out(len(events), train_config.validation_share) for user, events in sequences.items()}
    origin_ms = min(events[0].ts for events in sequences.values())
    selection = Run(sequences, {user: split.validation_from for user, split in splits.items()}, variant, origin_ms,
                    model_overrides, train_config, catalogue)  # fmt: skip
    if selection.events < 2:
        raise LogError(f"{log_path}: too few events to train on (each user's last ones are held out)")
    validation = Validation(featurize_sequences(sequences, selection.vocab)[0], splits, selection.model.config.history_len)
    chosen = selection.fit(train_config.epochs, validation, progress)
    final = selection
    if train_config.refit:
        final = Run(sequences, {user: split.test for user, split in splits.items()}, variant, origin_ms,
                    model_overrides, train_config, catalogue)  # fmt: skip
        final.fit(chosen.best_epoch, None, progress)
    metadata = {
        "name": f"intentrec-{variant}",
        "version": time.strftime("%Y%m%dT%H%M%S"),
        "trained_on": str(log_path),
        "until_ts": until_ts,
        "catalogue": None if catalogue_path is None else str(catalogue_path),
        "most_played": final.most_played,
        "train": {**train_config.__dict__, "best_epoch": chosen.best_epoch, "validation_ndcg10": chosen.best_ndcg,
                  "validation_targets": validation.targets, "trained_events": final.events},
    }
    save_checkpoint(Path(out_dir), final.model.eval(), final.vocab, metadata)
    return TrainResult(Path(out_dir), chosen.epochs, chosen.best_epoch, chosen.best_ndcg, time.perf_counter() - started,
                       final.events, validation.targets)  # fmt: skip


@dataclass
class Chosen:
    epochs: int  # epochs run
    best_epoch: int
    best_ndcg: float | None  # validation NDCG@10 of the best epoch (None: no validation)


class Run:
    """One training run: a model made for the events before each user's `end` (the vocabularies and
    the catalogue it learns come from those alone, and from the `catalogue` file's titles) and trained
    on them by `fit`."""

    def __init__(self, sequences: dict[str, list], end: dict[str, int], variant: str, origin_ms: int,
                 model_overrides: dict | None, train_config: TrainConfig, catalogue: list[CatalogueEntry]):  # fmt: skip
        seed_everything(train_config.seed)
        self.train_config = train_config
        events = {user: user_events[: end[user]] for user, user_events in sequences.items()}
        self.events = sum(len(user_events) for user_events in events.values())
        self.vocab = Vocabularies.fit((e for user_events in events.values() for e in user_events), catalogue=catalogue)
        rows_by_user, _ = featurize_sequences(events, self.vocab)
        config = IntentRecConfig(
            n_items=len(self.vocab.items),
            n_actions=len(self.vocab.actions),
            n_kinds=len(self.vocab.kinds),
            n_release_buckets=len(self.vocab.release),
            n_devices=len(self.vocab.devices),
            n_genres=len(self.vocab.genres),
            time_origin_ms=origin_ms,
            **variant_overrides(variant),
        )
        if model_overrides:
            config = replace(config, **model_overrides)
        self.model = IntentRec(config)
        self.model.learn_catalogue(np.concatenate([learnt_catalogue(events, rows_by_user),
                                                   listed_entries(catalogue, self.vocab)]))  # fmt: skip
        warmup = min(config.history_len - 1, train_config.chunk_len // 2)
        self.windows = training_windows(rows_by_user, train_config.chunk_len, warmup)
        self.description = f"{'select' if train_config.refit else 'train'} {variant}"
        targets = np.concatenate([following["item"][loss_from:] for _, loss_from, following in self.windows])
        counts = np.bincount(targets[targets >= FIRST_REAL], minlength=config.n_items).astype(np.float64)
        played = np.flatnonzero(counts)
        self.most_played = [int(i) for i in played[np.argsort(-counts[played], kind="stable")][:MOST_PLAYED]]
        self.sampler = None
        if uses_sampled_softmax(train_config.softmax, config.n_items):
            self.sampler = NegativeSampler(counts, train_config.negatives, train_config.seed)

    def fit(self, epochs: int, validation: Validation | None, progress: bool) -> Chosen:
        """Up to `epochs` epochs on the cosine schedule of TrainConfig.epochs (so that a refit's first
        epochs see the learning rates the selection run's did), stopping early `patience` epochs after
        the best validation NDCG@10; leaves the model with the best epoch's weights (the weight
        average where there is one), or the last epoch's without validation."""
        config, model = self.train_config, self.model
        steps_per_epoch = -(-len(self.windows) // config.batch_size)
        # A sampled softmax on a large catalogue reads a few rows of the item table a step: update those alone.
        sparse_items = self.sampler is not None and model.config.n_items > ROW_BY_ROW_FROM_ITEMS
        optimizer = Optimizer(model, config, config.epochs * steps_per_epoch, sparse_items=sparse_items)

        def judged() -> torch.nn.Module:  # what validation sees and the checkpoint keeps
            return model if optimizer.average is None else optimizer.average.averaged()

        best = (-1.0, 0, None)  # (validation NDCG@10, epoch, weights)
        epoch = 0
        order = np.random.default_rng(config.seed)
        description = self.description if validation is not None else self.description.replace("select", "refit")
        bar = tqdm(total=epochs, desc=description, unit="epoch", disable=not progress)
        for epoch in range(1, epochs + 1):
            model.train()
            losses = []
            # Similar lengths together, shuffled batches: less padding, still random order.
            by_length = sorted(order.permutation(len(self.windows)), key=lambda i: len(self.windows[i][0]))
            batches = [by_length[i : i + config.batch_size] for i in range(0, len(by_length), config.batch_size)]
            for b in order.permutation(len(batches)):
                chosen = [self.windows[i] for i in batches[b]]
                loss = loss_of_batch(model, tuple(zip(*chosen)), config.loss_weighting, self.sampler)
                optimizer.step(loss)
                losses.append(loss.item())
            bar.update(1)
            if validation is None:
                bar.set_postfix(loss=f"{np.mean(losses):.3f}")
                continue
            ndcg = validation.ndcg(judged())
            if ndcg > best[0]:
                best = (ndcg, epoch, {k: v.detach().clone() for k, v in judged().state_dict().items()})
            bar.set_postfix(loss=f"{np.mean(losses):.3f}", val_ndcg10=f"{ndcg:.4f}", best_epoch=best[1])
            if epoch - best[1] >= config.patience:
                break
        bar.close()
        if validation is None:
            model.load_state_dict(judged().state_dict())
            return Chosen(epoch, epoch, None)
        model.load_state_dict(best[2])
        return Chosen(epoch, best[1], best[0])
