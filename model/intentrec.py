"""IntentRec (Oh et al., Netflix, arXiv 2408.05353): hierarchical multi-task next-item prediction.

Reading order follows the paper:
  1. features F_k of every interaction                      (model.features.FeatureEmbedding)
  2. short-term encoder S_k over the last week               (ShortTermEncoder)
  3. intent encoder on F_k + S_k, one head per intent task   (IntentEncoder, IntentHeads)
  4. intent embedding Z_k = sum_i softmax(alpha)_i Proj_i(p_k^i)  (IntentFusion)
  5. item encoder on F_k + S_k + Z_k (ItemEncoder), then the softmax over the catalogue
     (model.item_layer.ItemLayer), which we mix with a pointer over the user's recent items (repeat
     or explore); where Z feeds it, the predicted intent also scores the catalogue directly
     (IntentMatch) and steers the mix

Streaming constraints, kept everywhere:
  - positions come from each interaction's own timestamp (sinusoidal encoding of absolute time), so a
    past interaction's representation never changes when a new one arrives;
  - attention is causal and limited to the last L interactions (the short-term encoder also to the
    last H of time), with explicit padding masks; training uses exactly the masks serving uses.

One forward pass serves training (p of each position's target), evaluation and serving (the
distribution after the newest interaction). Incremental serving passes a `Cache`: the keys and
values of the user's earlier positions go in, every attention layer attends to them as well, and the
new positions' own come out — a new event then costs one row per layer (model.serving.incremental).
The inputs (masks, time encodings, gaps) are prepared by model.inputs.model_inputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.config import IntentRecConfig, task_sizes
from model.features import FeatureEmbedding
from model.item_layer import Intent, ItemLayer, ItemState, NewTitles, Targets
from model.vocab import PAD, UNKNOWN


# --------------------------------------------------------------------------- building blocks


@dataclass
class Cache:
    """Incremental inference, as torchtune's KV cache inside the ordinary attention: the keys and
    values that P earlier positions left in each attention layer (past_keys_values: (layers,
    key|value, B, heads, P, head size)) and, for the repeat pointer, their pointer keys (B, P, D) and
    items (B, P), and how many interactions before the first new one each was (past_distances (B, P),
    for relative positions). The layers read theirs in the order they run (short-term, intent, item)
    and leave the new positions' own in keys_values and pointer_keys. A user's entries are kept
    between events by model.serving.kv_cache, so they come in and go out as tensors."""

    past_keys_values: torch.Tensor | None = None
    past_pointer_keys: torch.Tensor | None = None
    past_items: torch.Tensor | None = None
    past_distances: torch.Tensor | None = None
    keys_values: list[torch.Tensor] = field(default_factory=list)
    pointer_keys: torch.Tensor | None = None

    def attend(self, q, k, v, mask: torch.Tensor) -> torch.Tensor:
        """One attention layer's queries over the cached positions followed by the new ones; mask
        (B, 1, T, P + T), past first: boolean, or additive (model.intentrec.SelfAttention)."""
        layer = len(self.keys_values)
        self.keys_values.append(torch.stack([k, v]))
        if self.past_keys_values is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return attention_after(q, k, v, self.past_keys_values[layer], mask)

    def pointer_positions(self, pointer_keys: torch.Tensor, items: torch.Tensor):
        """The repeat pointer's keys, items and ages (model.intentrec.key_ages): the cached
        positions' (in the cache's order, not time's) followed by the new ones'."""
        self.pointer_keys = pointer_keys
        ages = key_ages(items)
        if self.past_pointer_keys is None:
            return pointer_keys, items, ages
        past_ages = self.past_distances + items.shape[1] - 1
        return (torch.cat([self.past_pointer_keys, pointer_keys], dim=1), torch.cat([self.past_items, items], dim=1),
                torch.cat([past_ages, ages], dim=1))


def key_ages(items: torch.Tensor) -> torch.Tensor:
    """(B, T): how many interactions before the newest of the T positions of `items` each is."""
    T = items.shape[1]
    return torch.arange(T - 1, -1, -1, device=items.device).expand_as(items)


class SelfAttention(nn.Module):
    """Multi-head self-attention. No dropout on the attention weights: on CPU it forces PyTorch's
    unfused attention path; the blocks' residual dropout regularises enough.

    With relative positions, each head adds a learnt bias for how many interactions separate the key
    from the query (0 .. L-1, Shaw et al. / T5 style): the order of interactions that share a timestamp,
    which the time encoding cannot tell apart. Distances are counted in the user's own history, so a
    cached key keeps its meaning when new interactions arrive."""

    def __init__(self, d_model: int, n_heads: int, window: int | None = None):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.distance_bias = nn.Parameter(torch.zeros(n_heads, window)) if window else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        if self.distance_bias is not None:
            mask = self.relative_bias(mask, None if cache is None else cache.past_distances)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            y = cache.attend(q, k, v, mask)
        return self.out(y.transpose(1, 2).reshape(B, T, D))

    def relative_bias(self, mask: torch.Tensor, past_distances: torch.Tensor | None) -> torch.Tensor:
        """The boolean mask (B, 1, T, P + T) as an additive one (B, heads, T, P + T): each allowed
        key's distance bias, -inf elsewhere. past_distances (B, P): the cached keys' distances from
        the first new position."""
        T = mask.shape[2]
        pos = torch.arange(T, device=mask.device)
        distance = (pos.view(T, 1) - pos.view(1, T)).unsqueeze(0)  # (1, T, T)
        if past_distances is not None:
            past = past_distances.unsqueeze(1) + pos.view(1, T, 1)  # (B, T, P)
            distance = torch.cat([past, distance.expand(past.shape[0], -1, -1)], dim=-1)
        distance = distance.clamp(0, self.distance_bias.shape[1] - 1)
        bias = self.distance_bias[:, distance].transpose(0, 1)  # (B or 1, heads, T, P + T)
        return bias.masked_fill(~mask, float("-inf"))


def attention_after(q, k, v, past: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention over cached keys/values followed by the rows' own, reading the
    cache in place rather than concatenating it with the new keys (a copy of the whole cache). mask:
    boolean, or additive (-inf where not allowed)."""
    past_k, past_v = past.unbind(0)
    scores = torch.cat([q @ past_k.transpose(-2, -1), q @ k.transpose(-2, -1)], dim=-1) / math.sqrt(q.shape[-1])
    scores = scores + mask if mask.is_floating_point() else scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    P = past_k.shape[2]
    return weights[..., :P] @ past_v + weights[..., P:] @ v


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, window: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attention = SelfAttention(d_model, n_heads, window)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm1(x), mask, cache))
        return x + self.dropout(self.mlp(self.norm2(x)))


class CausalTransformer(nn.Module):
    """Input FC + LayerNorm, plus the absolute-time encoding (model.inputs.time_encoding), then
    causal blocks."""

    def __init__(self, d_in: int, config: IntentRecConfig, n_layers: int):
        super().__init__()
        self.input = nn.Sequential(nn.Linear(d_in, config.d_model), nn.LayerNorm(config.d_model))
        self.input_dropout = nn.Dropout(config.input_dropout)
        self.blocks = nn.ModuleList(
            Block(config.d_model, config.n_heads, config.dropout,
                  config.attention_window if config.relative_positions else None)
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, x, time_code, mask, cache: Cache | None = None) -> torch.Tensor:
        return self.encode(self.embed(x, time_code), mask, cache)

    def embed(self, x: torch.Tensor, time_code: torch.Tensor) -> torch.Tensor:
        """Per-position input of the first block: FC + LayerNorm, plus the time encoding."""
        return self.input_dropout(self.input(x) + time_code)

    def encode(self, h: torch.Tensor, mask: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, mask, cache)
        return self.norm(h)


# --------------------------------------------------------------------------- the paper's components


class ShortTermEncoder(nn.Module):
    """S_k = Enc_short(F_pos..F_k): what the user did in the last H (a week by default)."""

    def __init__(self, d_features: int, config: IntentRecConfig):
        super().__init__()
        self.transformer = CausalTransformer(d_features, config, config.n_layers_short)

    def forward(self, features, time_code, short_mask, cache: Cache | None = None):
        return self.transformer(features, time_code, short_mask, cache)


class IntentEncoder(nn.Module):
    """FC + LayerNorm on F_k (+) S_k, then a causal transformer."""

    def __init__(self, d_in: int, config: IntentRecConfig):
        super().__init__()
        self.transformer = CausalTransformer(d_in, config, config.n_layers_intent)

    def forward(self, x, time_code, mask, cache: Cache | None = None):
        return self.transformer(x, time_code, mask, cache)


class IntentHeads(nn.Module):
    """One head per intent task, predicting the labels of the *next* interaction (logits)."""

    def __init__(self, config: IntentRecConfig):
        super().__init__()
        self.heads = nn.ModuleDict(
            {task: nn.Linear(config.d_model, n) for task, n in task_sizes(config).items()}
        )

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        return {task: head(h) for task, head in self.heads.items()}


def intent_probabilities(logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """p_k^i: genres are multi-label (sigmoid), every other task picks one label (softmax).
    The padding and unknown labels are never predicted."""
    probs = {}
    for task, z in logits.items():
        z = z.clone()
        z[..., PAD] = z[..., UNKNOWN] = float("-inf")
        probs[task] = torch.sigmoid(z) if task == "genre" else torch.softmax(z, dim=-1)
    return probs


class IntentFusion(nn.Module):
    """Z_k = sum_i softmax(alpha)_i Proj_i(p_k^i), with alpha_i = FC_att(Proj_i(p_k^i)).

    So that the weights (the paper's Fig. 7) can tell users apart, each Proj_i(p) is normalised
    (LayerNorm without a gain or bias of its own: no task brings a constant of its own into FC_att,
    which fixed its weight for everyone), FC_att's output is scaled by a learnt sharpness, and the
    same weights scale IntentMatch's per-task terms (ItemEncoder), so each gets a gradient of its
    own from the next-item loss. Training leaves these parameters out of weight decay."""

    def __init__(self, config: IntentRecConfig):
        super().__init__()
        self.projections = nn.ModuleDict(
            {task: nn.Linear(n, config.d_proj) for task, n in task_sizes(config).items()}
        )
        self.normalise = nn.LayerNorm(config.d_proj, elementwise_affine=False)
        self.attention = nn.Linear(config.d_proj, 1)
        self.log_sharpness = nn.Parameter(torch.zeros(()))

    def forward(self, probs: dict[str, torch.Tensor]):
        projected = torch.stack([self.normalise(self.projections[t](probs[t])) for t in self.projections], dim=-2)
        alpha = self.attention(projected).squeeze(-1) * self.log_sharpness.exp()
        weights = torch.softmax(alpha, dim=-1)  # (B, T, tasks)
        z = (weights.unsqueeze(-1) * projected).sum(-2)
        return z, weights


class TitleRecency(nn.Module):
    """What a recency list knows, for the repeat pointer: with attention over positions, a show
    played once between two binges of another gets a share of one position among dozens, below titles
    never played, though a user comes back to it often (the synthetic world's `continue` of a show
    not played last, bench/results/backtest/synth-default). Here a title is one key, its latest play
    within the query's window, and its score gains a learnt bias for its place in the user's titles
    by last play (0: the title played last) and w x log(its plays in the window) (w starts at 1: the
    attention over positions' sum, for keys alike)."""

    def __init__(self, window: int):
        super().__init__()
        self.rank_bias = nn.Parameter(torch.zeros(window))
        self.count_weight = nn.Parameter(torch.ones(()))

    def forward(self, key_items: torch.Tensor, key_age: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """key_items (B, P) and key_age (B, P): the keys' titles and how many interactions
        before the newest position each was; allowed (B, T, P): the keys each query may read. Returns
        the score bias (B, T, P) and the keys left allowed: each title's latest allowed play.

        The pairs of keys are compared among the keys some query may read only (at most L + T - 1 of
        them: a serving cache holds the whole receptive field, four times L)."""
        B, T, P = allowed.shape
        reach = len(self.rank_bias) + T - 1
        # Padded with `reach` keys no query reads, so that there are always `reach` to choose from
        # (a shape the compilers need not reason about).
        never = 1 << 62  # older than any key (exact as the float F.pad takes its value through)
        readable = F.pad(torch.where(allowed.any(1), key_age, never), (0, reach), value=never)
        keys = readable.topk(reach, largest=False).indices  # (B, R): every key a query may read among them
        spread = keys.unsqueeze(1).expand(B, T, reach)
        bias, latest = self.among(F.pad(key_items, (0, reach)).gather(1, keys), readable.gather(1, keys),
                                  F.pad(allowed, (0, reach)).gather(2, spread))
        return (bias.new_zeros(B, T, P + reach).scatter(2, spread, bias)[..., :P],
                latest.new_zeros(B, T, P + reach).scatter(2, spread, latest)[..., :P])

    def among(self, key_items: torch.Tensor, key_age: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` for every pair of the keys given."""
        same = (key_items.unsqueeze(-1) == key_items.unsqueeze(-2)).float()  # (B, P, P)
        later = (key_age.unsqueeze(-1) > key_age.unsqueeze(-2)).float()  # [j, k]: k after j
        reads = allowed.float()
        latest = allowed & ((reads @ (same * later).mT) == 0)  # no allowed later play of the same title
        plays = reads @ same  # (B, T, P): the key's title's plays among the allowed keys
        rank = (latest.float() @ later.mT).long()  # latest keys after this one: titles played since
        bias = self.rank_bias[rank.clamp(max=len(self.rank_bias) - 1)] + self.count_weight * plays.clamp(min=1).log()
        return bias, latest


class ItemEncoder(nn.Module):
    """FC + LayerNorm on F_k (+) S_k (+) Z_k, a causal transformer of its own (not shared with the
    intent encoder), then what the item layer (model.item_layer) needs to give the next-item
    distribution: each position's query in item space and, for the repeat pointer, its weights over
    the user's last L interactions and the gate.

    The distribution mixes two ways of choosing (our addition to the paper, in every variant):
    explore, a softmax over the catalogue through the item embeddings (weight tying), and repeat, a
    pointer over the user's last L interactions that puts their weight on the items played there.
    A gate learnt from the same state decides between them: p = (1 - g) p_explore + g p_repeat.
    Resuming shows and rewatching are most of streaming; a catalogue softmax alone learns to copy
    the last item only slowly. By default the pointer reads titles rather than positions
    (TitleRecency).

    Where Z feeds the item encoder (V2, V3), the intent probabilities are also read directly, as the
    hierarchy's second addition: IntentMatch (model.item_layer) adds to every item's explore logit how
    well the item fits the predicted kind, genres and release recency, and the predicted next action
    shifts the gate (w . p_action: "continue" and "rewatch" mean repeat, "discover" means explore).
    Both start at zero weight, so training decides how much they count.

    With config.repeat_and_match off, the paper's own item layer: the explore softmax alone.
    """

    def __init__(self, d_in: int, config: IntentRecConfig):
        super().__init__()
        self.transformer = CausalTransformer(d_in, config, config.n_layers_item)
        self.to_item_space = nn.Linear(config.d_model, config.d_item)
        self.repeats = config.repeat_and_match
        self.intent_gate = None
        if not self.repeats:  # the paper's item layer: the catalogue softmax alone
            return
        self.repeat_query = nn.Linear(config.d_model, config.d_model)
        self.repeat_key = nn.Linear(config.d_model, config.d_model)
        self.repeat_gate = nn.Linear(config.d_model, 1)
        self.titles = TitleRecency(config.attention_window) if config.pointer_over_titles else None
        if config.feeds_intent and "action" in config.intent_tasks:
            self.intent_gate = nn.Linear(config.n_actions, 1, bias=False)
            self.action_index = config.intent_tasks.index("action")
            nn.init.zeros_(self.intent_gate.weight)

    def forward(self, x, time_code, mask, items, intent: Intent | None = None, newest: bool = False,
                cache: Cache | None = None) -> ItemState:  # fmt: skip
        """The item layer's state after each position (B, T), or with `newest` after each row's last
        only (T = 1). `intent`: the positions' predicted intent where Z feeds the item encoder."""
        inputs = self.transformer.embed(x, time_code)
        h = self.transformer.encode(inputs, mask, cache)
        pointer_keys = self.repeat_key(inputs) if self.repeats else inputs[..., :0]
        if cache is None:
            key_items, key_age = items, key_ages(items)
        else:
            pointer_keys, key_items, key_age = cache.pointer_positions(pointer_keys, items)
        if newest:
            h, mask = h[:, -1:], mask[:, :, -1:]
            intent = intent.newest() if intent is not None else None
        pointer, gate = self.repeat_pointer(h, pointer_keys, key_items, key_age, mask, intent) if self.repeats else (None, None)
        return ItemState(self.to_item_space(h), pointer, key_items, gate, intent)

    def repeat_pointer(self, h, pointer_keys, key_items, key_age, mask, intent=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of each query over the allowed positions (B, T, P), and the gate g (B, T, 1).
        Over titles (config.pointer_over_titles): each title's latest play alone is a key, scored
        also by how recently and how often the title was played (TitleRecency)."""
        allowed = mask[:, 0]
        scores = self.repeat_query(h) @ pointer_keys.transpose(1, 2) / math.sqrt(h.shape[-1])
        if self.titles is not None:
            bias, allowed = self.titles(key_items, key_age, allowed)
            scores = scores + bias
        pointer = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        gate = self.repeat_gate(h)
        if self.intent_gate is not None:
            gate = gate + self.intent_gate(intent.probs["action"]) * intent.scale(self.action_index)
        return pointer, torch.sigmoid(gate)


# --------------------------------------------------------------------------- the whole model


@dataclass
class IntentRecOutput:
    item_probs: torch.Tensor | None  # p(next item): (B, T, n_items + slots); (B, T) for targets; (B, n_items + slots + C) newest
    intent_logits: dict[str, torch.Tensor]  # task -> (B, T, n_labels)
    intent_probs: dict[str, torch.Tensor]
    intent_embedding: torch.Tensor | None  # Z: (B, T, d_proj), None without intent tasks
    intent_weights: torch.Tensor | None  # (B, T, tasks)
    item_state: ItemState  # what the item layer reads (model.item_layer)
    # The catalogue item of each of item_probs' first columns (B, K) where a retriever chose them
    # (model.serving.retrieval); None where they are the whole catalogue.
    item_columns: torch.Tensor | None = None


class IntentRec(nn.Module):
    def __init__(self, config: IntentRecConfig):
        super().__init__()
        self.config = c = config
        self.features = FeatureEmbedding(c)
        d = self.features.dim
        self.short_term = ShortTermEncoder(d, c) if c.use_short_term else None
        d_context = d + (c.d_model if c.use_short_term else 0)
        if c.intent_tasks:
            self.intent_encoder = IntentEncoder(d_context, c)
            self.intent_heads = IntentHeads(c)
            self.intent_fusion = IntentFusion(c)
        self.item_encoder = ItemEncoder(d_context + (c.d_proj if c.feeds_intent else 0), c)
        self.item_layer = ItemLayer(c)

    def learn_catalogue(self, entries: np.ndarray) -> None:
        """Remember what IntentMatch scores of each item (kind, genres, release day) from catalogue
        entries (model.features.catalogue_entries); nothing to remember where Z is not fed."""
        if self.item_layer.intent_match is not None:
            self.item_layer.intent_match.learn(entries)

    def forward(
        self, x: dict[str, torch.Tensor], targets: torch.Tensor | Targets | None = None, newest: bool = False,
        cache: Cache | None = None, new_titles: NewTitles | None = None,
    ) -> IntentRecOutput:
        """x: model.inputs.model_inputs of a batch of rows. item_probs is p(next item) after every
        position (B, T, n_items + unknown_slots); with `targets` (B, T) item indices only p(target)
        (B, T) (a model.item_layer.Targets: against sampled negatives); with `newest`, only the
        distribution after the last position (B, n_items + unknown_slots + C, C the new titles'
        columns given): rows are then padded on the left. With a `cache`, the rows follow the cached
        positions (incremental inference). `new_titles`: the titles first seen in the stream, ranked
        beside the catalogue (serving)."""
        if new_titles is not None and not newest:
            raise ValueError("new titles are ranked at each row's newest position only (newest=True)")
        out = self.encode(x, newest, cache)
        if isinstance(targets, torch.Tensor):
            targets = Targets(targets)
        item_probs, item_columns = self.item_layer(out.item_state, self.features.item.weight, targets, new_titles)
        return replace(out, item_probs=item_probs[:, 0] if newest else item_probs, item_columns=item_columns)

    def encode(self, x: dict[str, torch.Tensor], newest: bool = False, cache: Cache | None = None) -> IntentRecOutput:
        """Everything up to the item layer (item_probs left None): the intent predictions, Z and its
        weights, and the item layer's state after each position (or each row's newest)."""
        c = self.config
        time_code = x["time_code"]
        mask, short_mask = x["attend"].unsqueeze(1), x["attend_short"].unsqueeze(1)
        features = self.features(x)

        context = [features]
        if self.short_term is not None:
            context.append(self.short_term(features, time_code, short_mask, cache))
        context = torch.cat(context, dim=-1)

        intent_logits, intent_probs, z, weights = {}, {}, None, None
        if c.intent_tasks:
            intent_logits = self.intent_heads(self.intent_encoder(context, time_code, mask, cache))
            intent_probs = intent_probabilities(intent_logits)
            z, weights = self.intent_fusion(intent_probs)

        item_input, intent = context, None
        if c.feeds_intent:
            item_input = torch.cat([context, z], dim=-1)
            intent = Intent(intent_probs, x["days"], weights)
        state = self.item_encoder(item_input, time_code, mask, x["item"], intent, newest, cache)
        return IntentRecOutput(None, intent_logits, intent_probs, z, weights, state)
