"""One training step's update of the weights, and the weight average that `train` keeps.

Every parameter but the item table: AdamW on a cosine schedule, gradients clipped to norm 1, and a
debiased exponential moving average of the weights (WeightAverage). The item table the same way
under the full softmax, where every step's loss reads all of it.

Under a sampled softmax a step reads a few thousand rows of the item table (the batch's items, its
targets and the sampled negatives), but AdamW, the clipping norm and the average would still go
over every row: 295 ms a step at 200,000 items, 1.5 s at 1,000,000 (bench/item_table_step.py), as
much as the rest of the step at those sizes. There the table is row-sparse (`sparse_table`): its
gradient holds only the rows read (nn.Embedding's sparse gradients), SparseAdam (lazy Adam: a
row's moments move when it is read) and the decoupled weight decay update only those, and the
average brings a row up to date when it is next read, or before the average is used, in one step
that is exactly the EMA updates it missed while its weights stood still. A step then costs the rows
it read, whatever the catalogue.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from model.config import TrainConfig
from model.intentrec import IntentRec

MAX_GRAD_NORM = 1.0
# Under the sampled softmax, the item table is updated row by row beyond this many items. Below it a
# step reads most rows anyway and updating every row costs little (bench/item_table_step.py: 1.03x
# at 2,000 items); on MovieLens-100K (1,682 titles) sampled training scored 0.0047 below the full
# softmax with row-by-row updates and 0.0030 with every-row ones (3 seeds, both intervals across
# zero: bench/results/quality-sampled-movielens.md), so there is nothing to buy with that risk.
ROW_BY_ROW_FROM_ITEMS = 10_000


class WeightAverage:
    """`averaged()`: a copy of the model whose parameters are the exponential moving average of the
    model's, update n (0-based) weighted (1 - d) / (1 - d^(n+1)) (d = decay): a running mean over the
    first steps, then the usual EMA, never pulled towards the first step's weights (which a short
    training would otherwise keep). Its buffers stay those of the model when the average was made
    (an average of learn_catalogue's +inf release days would be NaN).

    With a `sparse_table`, rows of that parameter are updated only when `update` names them; call
    `catch_up(rows)` before the weights of `rows` move (`averaged()` catches up every row)."""

    def __init__(self, model: nn.Module, decay: float, sparse_table: nn.Parameter | None = None):
        self._module = copy.deepcopy(model)
        self.decay = decay
        self.updates = 0
        averages = dict(self._module.named_parameters())
        self._dense = [(averages[name], weights) for name, weights in model.named_parameters()
                       if weights is not sparse_table]  # fmt: skip
        self._table = None
        if sparse_table is not None:
            name = next(name for name, weights in model.named_parameters() if weights is sparse_table)
            self._table = (averages[name], sparse_table)
            self._updated_to = torch.zeros(len(sparse_table), dtype=torch.int64)  # per row: updates it has

    def averaged(self) -> nn.Module:
        """The model with the averaged weights, every row up to date."""
        self.catch_up()
        return self._module

    def _weight(self, n: int) -> float:
        return (1 - self.decay) / (1 - self.decay ** (n + 1))

    @torch.no_grad()
    def update(self, rows: torch.Tensor | None = None) -> None:
        """Average in the model's current weights (of the sparse table: those of `rows` only)."""
        weight = self._weight(self.updates)
        averages, weights = zip(*self._dense)
        torch._foreach_lerp_(list(averages), list(weights), weight)
        if self._table is not None and rows is not None:
            average, table = self._table
            average[rows] = average[rows].lerp(table[rows], weight)
            self._updated_to[rows] = self.updates + 1
        self.updates += 1

    @torch.no_grad()
    def catch_up(self, rows: torch.Tensor | None = None) -> None:
        """Bring the sparse table's `rows` (every row without) up to date, their weights having stood
        still since each one's last update: updates a..b-1 of a constant w leave
        w + (average - w) d^(b-a) (1 - d^a) / (1 - d^b)."""
        if self._table is None or self.updates == 0:
            return
        average, table = self._table
        if rows is None:
            rows = torch.arange(len(table))
        missed_from = self._updated_to[rows].double()
        d, b = self.decay, self.updates
        kept = (d ** (b - missed_from) * (1 - d**missed_from) / (1 - d**b)).float().unsqueeze(-1)
        average[rows] = table[rows] + (average[rows] - table[rows]) * kept
        self._updated_to[rows] = b


class Optimizer:
    """A training step's update of an IntentRec: zero the gradients, backpropagate `loss`, clip,
    step, average. With `sparse_items` the item table is updated row by row (module docstring): its
    input lookup is switched to sparse gradients (the item layer's reads of sampled items are)."""

    def __init__(self, model: IntentRec, config: TrainConfig, total_steps: int, sparse_items: bool = False):
        self.table = model.features.item.weight if sparse_items else None
        self.weight_decay = config.weight_decay
        self.dense = [p for p in model.parameters() if p is not self.table]
        # No weight decay on the intent fusion: it would pull every user's weights back to the same mix.
        fusion = {id(p) for p in model.intent_fusion.parameters()} if model.config.intent_tasks else set()
        groups = [{"params": [p for p in self.dense if id(p) not in fusion]},
                  {"params": [p for p in self.dense if id(p) in fusion], "weight_decay": 0.0}]
        self.optimizers: list[torch.optim.Optimizer] = [
            torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)]
        if self.table is not None:
            model.features.item.sparse = True
            self.optimizers.append(torch.optim.SparseAdam([self.table], lr=config.lr))
        self.schedules = [torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps,
                                                                     eta_min=config.lr / 20)
                          for optimizer in self.optimizers]  # fmt: skip
        self.average = WeightAverage(model, config.ema_decay, self.table) if config.ema_decay else None

    def step(self, loss: torch.Tensor) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        rows = self._clip()
        if self.average is not None:
            self.average.catch_up(rows)  # before the rows' weights move
        for optimizer in self.optimizers:
            optimizer.step()
        if rows is not None:  # AdamW's decoupled weight decay, for the rows read
            with torch.no_grad():
                self.table[rows] *= 1 - self.optimizers[-1].param_groups[0]["lr"] * self.weight_decay
        for schedule in self.schedules:
            schedule.step()
        if self.average is not None:
            self.average.update(rows)

    def _clip(self) -> torch.Tensor | None:
        """Scale the gradients to norm MAX_GRAD_NORM at most, all together; the sparse table's rows read."""
        dense = [p for p in self.dense if p.grad is not None]
        if self.table is None:
            torch.nn.utils.clip_grad_norm_(dense, MAX_GRAD_NORM)
            return None
        gradient = self.table.grad
        if gradient is None:
            gradient = torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.int64), torch.zeros(0, self.table.shape[1]),
                                               self.table.shape)  # fmt: skip
        self.table.grad = gradient = gradient.coalesce()
        total = torch.nn.utils.get_total_norm([*(p.grad for p in dense), gradient.values()])
        torch.nn.utils.clip_grads_with_norm_(dense, MAX_GRAD_NORM, total)
        self.table.grad = gradient * (MAX_GRAD_NORM / (total + 1e-6)).clamp(max=1.0)
        return gradient.indices()[0]
