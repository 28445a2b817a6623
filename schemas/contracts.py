"""The three messages IntentStream reads and writes, and the record of a catalogue file, as typed
Python values.

The JSON Schema files beside this module are the published form of the same contracts;
`schemas.codec` turns bytes into these values and back, and is the only place that does.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

# Limits are part of the contract: a message outside them is a dead letter, never truncated.
MAX_MESSAGE_BYTES = 16 * 1024
# A dead letter keeps at most this much of the original key and value (with their sizes and a
# digest of the whole), so it always fits in a Kafka message (1 MB by default) whatever came in.
MAX_DEAD_LETTER_KEY_BYTES = 4 * 1024
MAX_DEAD_LETTER_VALUE_BYTES = 64 * 1024
MAX_ID_CHARS = 128  # event_id, user_id, item_id
MAX_LABEL_CHARS = 64  # action, each genre, device
MAX_GENRES = 16
TS_MIN_MS = 0  # 1970-01-01
TS_MAX_MS = 4_102_444_800_000  # 2100-01-01
RELEASE_TS_MIN_MS = -2_208_988_800_000  # 1900-01-01: old films were released before 1970
MAX_DURATION_S = 86_400.0
KINDS = ("movie", "show")


@dataclass(frozen=True, slots=True)
class PlayEvent:
    """One play of a title by a user (the input topic)."""

    event_id: str  # idempotency key
    user_id: str
    item_id: str
    ts: int  # event time, epoch ms
    action: str  # discover, continue, rewatch, trailer, ...: vocabulary learnt from data
    genres: tuple[str, ...]
    kind: str  # one of KINDS
    release_ts: int | None  # epoch ms
    duration_s: float  # watch time, >= 0
    device: str | None = None


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """One title that a shop offers (a record of a catalogue file): what is known of it before anyone
    plays it. The fields mean what PlayEvent's fields of the same names mean, within the same limits."""

    item_id: str
    kind: str  # one of KINDS
    genres: tuple[str, ...]
    release_ts: int | None  # epoch ms


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    version: str


@dataclass(frozen=True, slots=True)
class LabelScore:
    label: str
    p: float


@dataclass(frozen=True, slots=True)
class ItemScore:
    item_id: str
    score: float


@dataclass(frozen=True, slots=True)
class IntentUpdate:
    """The scorer's answer to one play event (the output topic, keyed by user_id)."""

    user_id: str
    event_id: str  # of the event that triggered this update
    ts: int  # of the event that triggered this update
    model: ModelRef
    scored_at: int  # epoch ms
    intent_embedding: tuple[float, ...]
    intents: dict[str, tuple[LabelScore, ...]]  # task -> top labels, most likely first
    intent_weights: dict[str, float]  # task -> softmax(alpha_task)
    next_items: tuple[ItemScore, ...]  # top-K, best first


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be scored, with everything needed to replay it. `key` and `value`
    are the original bytes, or, for a message larger than the dead-letter limits, their first
    MAX_DEAD_LETTER_KEY_BYTES / MAX_DEAD_LETTER_VALUE_BYTES; `key_size`, `value_size` and
    `value_sha256` describe the original. Made from a whole message (sizes left None), it cuts and
    measures it itself."""

    code: str  # a ContractError code, or `late`
    detail: str
    source_topic: str | None
    partition: int | None
    offset: int | None
    key: bytes | None
    value: bytes
    failed_at: int = field(default=0)  # epoch ms
    key_size: int | None = None  # None when there is no key
    value_size: int | None = None
    value_sha256: str | None = None  # hex digest of the whole original value

    def __post_init__(self) -> None:
        if self.value_size is None:
            object.__setattr__(self, "value_size", len(self.value))
            object.__setattr__(self, "value_sha256", hashlib.sha256(self.value).hexdigest())
            object.__setattr__(self, "value", self.value[:MAX_DEAD_LETTER_VALUE_BYTES])
        if self.key_size is None and self.key is not None:
            object.__setattr__(self, "key_size", len(self.key))
            object.__setattr__(self, "key", self.key[:MAX_DEAD_LETTER_KEY_BYTES])

    @property
    def truncated(self) -> bool:
        """Whether the key or value kept here is only the start of the original."""
        return self.value_size > len(self.value) or (self.key is not None and self.key_size > len(self.key))
