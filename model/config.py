"""IntentRec hyper-parameters and the paper's ablations (V0-V3), all from one dataclass.

The paper (arXiv 2408.05353) publishes no dimensions, depths, sequence lengths or lambda; the defaults
below are ours, chosen to train in minutes on two CPU cores (see README: Model defaults).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

INTENT_TASKS = ("action", "genre", "kind", "release")
VARIANTS = ("V0", "V1", "V2", "V3")
DAY_MS = 86_400_000
LOSS_WEIGHTINGS = ("uniform", "watch")
SOFTMAXES = ("auto", "full", "sampled")


@dataclass(frozen=True)
class IntentRecConfig:
    # Vocabulary sizes, each including the padding (0) and unknown (1) indices.
    n_items: int
    n_actions: int
    n_kinds: int
    n_release_buckets: int
    n_devices: int
    n_genres: int
    # Feature embeddings
    d_item: int = 64
    d_small: int = 16  # action, kind, release bucket, device, genre
    # Transformers
    d_model: int = 64
    n_heads: int = 2
    n_layers_short: int = 1
    n_layers_intent: int = 1
    n_layers_item: int = 2
    # Regularisation and initialisation: with dropout 0.1, N(0, 1) embeddings and 30 epochs,
    # MovieLens-100K NDCG@10 was 0.035 (V0) / 0.037 (V3); with these, 0.054 / 0.058, the synthetic
    # world unchanged (bench/results/quality-recipe-*.md).
    dropout: float = 0.25  # on each block's residual branches
    input_dropout: float = 0.25  # on each transformer's input (FC + LayerNorm + time encoding)
    # Feature embeddings start as N(0, std) (None: PyTorch's N(0, 1)). The item table is also the
    # output layer (weight tying): N(0, 1) starts the catalogue softmax far from uniform.
    embedding_init_std: float | None = 0.02
    # The item embedding enters F_k multiplied by this: with N(0, 0.02) tables, 1 left the item drowned by
    # the five side features in the input layer (MovieLens-100K V0 0.0668 at 1, 0.0698 at 8, 0.0705 at 16).
    item_input_scale: float = 8.0
    attention_window: int = 50  # L: every layer attends to at most the last L interactions
    # A learnt bias per head and distance in interactions on every attention layer (model.intentrec.
    # SelfAttention): the order of interactions that share a timestamp, which the time encoding cannot
    # tell apart (half of MovieLens-100K's consecutive ratings share their second).
    relative_positions: bool = True
    # Titles the vocabulary lacks (released after training): each user's titles get item indices
    # n_items.. of their own, `unknown_slots` at most (model.features.slot_title), so that the repeat
    # pointer can point at them: they are continued and returned to as any other title. No weights.
    # Once all are taken, a new title takes the slot of the one played least recently; 50, the default
    # attention_window, means every title within the pointer's reach has one.
    unknown_slots: int = 50
    # Titles the vocabulary lacks, first seen in the stream (any user's play): up to this many get a
    # column each after the slots, scored from what their plays say of them (kind, genres, release
    # date; model.serving.new_titles), so that a new release can be discovered. No weights.
    new_title_columns: int = 256
    # ... and a title gets one only once this many distinct users have played it, so that a stray or
    # made-up item id does not reach other users' recommendations (a user's own slot needs no such
    # proof: it only ever ranks for that user).
    new_title_min_users: int = 3
    short_term_window_ms: int = 7 * DAY_MS  # H: the short-term encoder sees only the last week
    time_origin_ms: int = 0  # absolute time encodings count hours from here
    # Intent
    d_proj: int = 32  # size of the intent embedding Z
    intent_tasks: tuple[str, ...] = INTENT_TASKS
    use_short_term: bool = True
    hierarchical: bool = True  # feed Z to the item encoder (H-MTL); False = heads in parallel
    intent_loss_weight: float = 0.5  # lambda
    variant: str = "V3"
    # Our additions to the paper's item layer (model.intentrec.ItemEncoder): the repeat pointer and its
    # gate, and IntentMatch where Z feeds the item encoder. False: the paper's own, a softmax over the
    # catalogue only (bench/results/quality-paper-arch.md compares the two).
    repeat_and_match: bool = True
    # The repeat pointer over titles rather than positions: each title's latest play is its key, with a
    # learnt bias for its place among the user's titles by last play and for its plays in the window
    # (model.intentrec.TitleRecency).
    pointer_over_titles: bool = True

    def __post_init__(self):
        unknown = set(self.intent_tasks) - set(INTENT_TASKS)
        if unknown:
            raise ValueError(f"unknown intent tasks {sorted(unknown)}; known: {INTENT_TASKS}")
        for name in ("n_items", "n_actions", "n_kinds", "n_release_buckets", "n_devices", "n_genres"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 2:
                raise ValueError(f"{name}={getattr(self, name)!r}: a vocabulary size counts padding and unknown, so "
                                 "it is a whole number of at least 2")
        for name in ("d_item", "d_small", "d_model", "n_heads", "d_proj", "n_layers_item", "new_title_min_users"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a whole number of at least 1")
        for name in ("n_layers_short", "n_layers_intent", "unknown_slots", "new_title_columns"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a whole number of at least 0")
        for name in ("dropout", "input_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a probability in [0, 1)")
        if self.embedding_init_std is not None and not self.embedding_init_std > 0:
            raise ValueError(f"embedding_init_std={self.embedding_init_std!r} must be > 0 (or null)")
        if self.intent_loss_weight < 0 or self.short_term_window_ms <= 0:
            raise ValueError("intent_loss_weight must be >= 0 and short_term_window_ms > 0")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be a multiple of n_heads={self.n_heads}")
        if self.attention_window < 1:
            raise ValueError("attention_window must be >= 1")

    @property
    def n_outputs(self) -> int:
        """Columns of the next-item distribution at most: the catalogue, the users' unknown-title
        slots, then the titles first seen in the stream (a call carries as many of those columns as
        model.serving.new_titles.NewTitleRegistry.width says)."""
        return self.n_items + self.unknown_slots + self.new_title_columns

    @property
    def feeds_intent(self) -> bool:
        return bool(self.intent_tasks) and self.hierarchical

    @property
    def pointer_key_size(self) -> int:
        """Width of the repeat pointer's key per interaction (what a serving cache keeps of it)."""
        return self.d_model if self.repeat_and_match else 0

    @property
    def receptive_field(self) -> int:
        """How many of the most recent interactions a prediction can depend on.

        Each attention layer reaches L-1 interactions further back; the encoders are chained only
        through per-position inputs, so the reach of a path is the sum of its layers.
        """
        short = self.n_layers_short if self.use_short_term else 0
        intent = self.n_layers_intent if self.intent_tasks else 0
        item_path = short + self.n_layers_item + (intent if self.feeds_intent else 0)
        intent_path = short + intent
        return max(item_path, intent_path) * (self.attention_window - 1) + 1

    @property
    def history_len(self) -> int:
        """Interactions a scorer needs: the receptive field plus one, whose timestamp gives the
        first one its gap feature."""
        return self.receptive_field + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "IntentRecConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        raw = dict(raw)
        raw["intent_tasks"] = tuple(raw.get("intent_tasks", INTENT_TASKS))
        raw.setdefault("relative_positions", False)  # a checkpoint from before them has no distance biases
        raw.setdefault("pointer_over_titles", False)  # one from before it points over positions
        return cls(**raw)


def task_sizes(config: IntentRecConfig) -> dict[str, int]:
    """Labels of each intent task the config has (padding and unknown included)."""
    sizes = {
        "action": config.n_actions,
        "genre": config.n_genres,
        "kind": config.n_kinds,
        "release": config.n_release_buckets,
    }
    return {task: sizes[task] for task in config.intent_tasks}


def variant_overrides(variant: str) -> dict:
    """The paper's ablations. V0: no intent tasks. V1: intent heads in parallel (Z not fed to the
    item encoder). V2: hierarchical without the short-term encoder. V3: the full model."""
    table = {
        "V0": dict(intent_tasks=()),
        "V1": dict(hierarchical=False),
        "V2": dict(use_short_term=False),
        "V3": dict(),
    }
    if variant not in table:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    return {**table[variant], "variant": variant}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping (one target per user: noisy)
    batch_size: int = 16  # sequences per step (32 did fewer steps for the same epochs: MovieLens-100K 0.065 vs 0.067)
    chunk_len: int = 200  # interactions per training sequence
    lr: float = 2e-3  # peak; cosine decay to lr / 20 over `epochs`
    weight_decay: float = 0.01
    seed: int = 0
    # "uniform": every next-item target alike, as the ranking metrics (and a service's every play) count
    # them; "watch": each weighted by its watch time (the paper's d_k: a film watched to the end counts
    # more than a trailer). On the default synthetic world with the pointer over titles, "watch" trained
    # the model to rank films above the next episode of a show and above a trailer's title: time-split
    # backtest NDCG@10 0.594 against 0.609 uniform (`continue` HR@10 0.942 against 0.962, trailer 0.140
    # against 0.213), leave-one-out 3 seeds uniform - watch +0.0047 [-0.0032, +0.0125]
    # (bench/results/quality-loss-weighting.md). MovieLens has no watch time (both are the same there).
    loss_weighting: str = "uniform"
    # The checkpoint's weights are an exponential moving average of the weights after each step, each
    # step's counted ema_decay^(steps after it) (0: the last step's weights alone). MovieLens-100K V0,
    # seeds 0-2: 0.0747 / 0.0711 / 0.0700 with 0.998, against 0.0709 / 0.0678 / 0.0680 without
    # (0.99: 0.0692, seed 0).
    ema_decay: float = 0.998
    # Each user's last interaction is the test target; this share of the ones before it (at least one)
    # are validation targets, which choose the epoch kept (model.training.validation).
    validation_share: float = 0.05
    # Then train a new model that many epochs on every event but the test targets, the validation ones
    # included: the most recent plays are what a deployed model most needs (README: Train and evaluate).
    refit: bool = True
    # The next-item softmax: over the whole catalogue ("full"), or over the step's targets and
    # `negatives` items drawn uniformly, with the logQ correction ("sampled"; model.training.negatives),
    # whose step costs the same whatever the catalogue; "auto": sampled beyond
    # model.training.negatives.SAMPLED_FROM_ITEMS items.
    softmax: str = "auto"
    negatives: int = 2048

    def __post_init__(self):
        if self.softmax not in SOFTMAXES:
            raise ValueError(f"softmax={self.softmax!r}; choose one of {SOFTMAXES}")
        if self.negatives < 1:
            raise ValueError(f"negatives={self.negatives!r} must be a whole number of at least 1")
        if not 0 < self.validation_share < 1:
            raise ValueError(f"validation_share={self.validation_share!r} must be in (0, 1)")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting={self.loss_weighting!r}; choose one of {LOSS_WEIGHTINGS}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay!r} must be in [0, 1) (0: no averaging)")
