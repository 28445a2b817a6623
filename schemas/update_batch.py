"""IntentUpdates of a whole micro-batch, encoded at once from the model's arrays.

`encode_intent_updates` writes, for B scored events, the bytes `encode_intent_update` would write
for each of their IntentUpdates, byte for byte, in either wire format, without making an
IntentUpdate, LabelScore or ItemScore per event. The stream's hot path encodes with it;
`encode_intent_update` stays the reference (tests hold the two equal).

How: every update of a batch is the same sequence of pieces (map headers and keys, an event's
ids, the numbers, the labels' names), so the batch is assembled column by column. Each piece is a
slice of one byte pool: constants are stored once, the labels' names once per vocabulary and
format (LabelTable), the numbers of a whole column in one call (msgpack: float32 cells written by
numpy; JSON: one orjson call on the column, split at its commas), and only the event's own ids and
time are encoded per event. One numpy gather then lays every message's pieces end to end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import msgpack
import numpy as np
import orjson

from schemas.contracts import ModelRef, PlayEvent

__all__ = ["LabelTable", "ScoreColumns", "TopLabels", "encode_intent_updates"]


class LabelTable:
    """Label names by index (a vocabulary: item ids, or one intent task's labels), each encoded once
    per wire format the first time a batch needs it."""

    def __init__(self, names: Sequence[str]):
        self.names = tuple(names)
        self._encoded: dict[str, tuple[bytes, _Pieces]] = {}

    def __len__(self) -> int:
        return len(self.names)

    def encoded(self, wire: _Wire) -> tuple[bytes, _Pieces]:
        """The names encoded by `wire`, end to end, and where each lies."""
        if wire.name not in self._encoded:
            self._encoded[wire.name] = _end_to_end([wire.value(name) for name in self.names])
        return self._encoded[wire.name]


@dataclass(frozen=True)
class TopLabels:
    """The best labels of B answers, best first: answer b's j-th label is
    `table.names[indices[b, j]]`, scored `values[b, j]`. Indices from len(table) on name labels of
    this batch only, `extra.names[index - len(table)]` (a user's titles the vocabulary lacks)."""

    table: LabelTable
    indices: np.ndarray  # (B, k) integers
    values: np.ndarray  # (B, k) floats
    extra: LabelTable | None = None

    def name(self, index: int) -> str:
        return self.table.names[index] if index < len(self.table) else self.extra.names[index - len(self.table)]


@dataclass(frozen=True)
class ScoreColumns:
    """The model's part of B IntentUpdates, as arrays (field meanings as in IntentUpdate)."""

    intent_embedding: np.ndarray  # (B, d_proj); (B, 0) for a model without intent tasks
    intents: dict[str, TopLabels]  # task -> top labels
    intent_weights: dict[str, np.ndarray]  # task -> (B,) weights; empty without an intent embedding
    next_items: TopLabels  # top-K item ids and scores

    def __len__(self) -> int:
        return len(self.next_items.indices)


def encode_intent_updates(
    triggers: Sequence[PlayEvent], model: ModelRef, scored_at: int, scores: ScoreColumns, fmt: str
) -> list[bytes]:
    """The encoded IntentUpdate of each event in `triggers` (in order): its ids and time, `model`,
    `scored_at`, and row b of `scores`. Equal to encode_intent_update of each update."""
    if fmt not in _WIRES:
        raise ValueError(f"unknown wire format {fmt!r}; expected one of {tuple(_WIRES)}")
    if len(triggers) != len(scores):
        raise ValueError(f"{len(triggers)} events but {len(scores)} rows of scores")
    if not triggers:
        return []
    wire = _WIRES[fmt]
    out = _Messages(len(triggers), wire)
    out.constant(wire.map_start(9) + wire.key(0, "user_id"))
    out.per_message([wire.value(event.user_id) for event in triggers])
    out.constant(wire.key(1, "event_id"))
    out.per_message([wire.value(event.event_id) for event in triggers])
    out.constant(wire.key(2, "ts"))
    out.per_message([wire.value(event.ts) for event in triggers])
    out.constant(
        wire.key(3, "model") + wire.value({"name": model.name, "version": model.version})
        + wire.key(4, "scored_at") + wire.value(scored_at) + wire.key(5, "intent_embedding")
    )  # fmt: skip
    out.array(b"", out.numbers(scores.intent_embedding))

    out.constant(wire.key(6, "intents") + wire.map_start(len(scores.intents)))
    for position, (task, top) in enumerate(scores.intents.items()):
        out.constant(wire.key(position, task))
        out.array(
            wire.map_start(2) + wire.key(0, "label"), out.labels(top), wire.key(1, "p"), out.numbers(top.values),
            wire.map_end(),
        )  # fmt: skip
    out.constant(wire.map_end())

    tasks = list(scores.intent_weights)
    weights = np.stack([scores.intent_weights[task] for task in tasks], axis=1) if tasks else np.zeros((len(out), 0))
    out.constant(wire.key(7, "intent_weights") + wire.map_start(len(tasks)))
    out.entries(len(tasks), [wire.key(position, task) for position, task in enumerate(tasks)], out.numbers(weights))
    out.constant(wire.map_end())

    items = scores.next_items
    out.constant(wire.key(8, "next_items"))
    out.array(
        wire.map_start(2) + wire.key(0, "item_id"), out.labels(items), wire.key(1, "score"), out.numbers(items.values),
        wire.map_end(),
    )  # fmt: skip
    out.constant(wire.map_end())
    return out.messages()


# ---------------------------------------------------------------------------------------------
# The two wire formats, as the pieces they write
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pieces:
    """Slices of a byte buffer: piece i is buffer[starts[i] : starts[i] + lengths[i]]. Shapes
    broadcast: (B, m) for m pieces of each of B messages, (m,) for pieces shared by all."""

    starts: np.ndarray
    lengths: np.ndarray

    def moved(self, by: int) -> "_Pieces":
        return _Pieces(self.starts + by, self.lengths)


def _end_to_end(pieces: Sequence[bytes]) -> tuple[bytes, _Pieces]:
    """`pieces` joined, and where each lies in the joined bytes."""
    lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    return b"".join(pieces), _Pieces(np.cumsum(lengths) - lengths, lengths)


class _Wire(Protocol):
    """What a format writes around values; `numbers` encodes a (B, m) column of floats at once."""

    name: str

    def value(self, value) -> bytes: ...
    def map_start(self, size: int) -> bytes: ...
    def map_end(self) -> bytes: ...
    def key(self, position: int, name: str) -> bytes: ...
    def array_start(self, size: int) -> bytes: ...
    def array_end(self) -> bytes: ...
    def before_entry(self, position: int) -> bytes: ...
    def numbers(self, values: np.ndarray) -> tuple[bytes, _Pieces]: ...


class _Json:
    """orjson's compact JSON; floats as Python floats (float64), which orjson writes alike."""

    name = "json"
    value = staticmethod(orjson.dumps)

    def map_start(self, size: int) -> bytes:
        return b"{"

    def map_end(self) -> bytes:
        return b"}"

    def key(self, position: int, name: str) -> bytes:
        return self.before_entry(position) + orjson.dumps(name) + b":"

    def array_start(self, size: int) -> bytes:
        return b"["

    def array_end(self) -> bytes:
        return b"]"

    def before_entry(self, position: int) -> bytes:
        return b"," if position else b""

    def numbers(self, values: np.ndarray) -> tuple[bytes, _Pieces]:
        # "[v0,v1,...]": number i lies between the i-th and (i+1)-th of the brackets and commas.
        text = orjson.dumps(np.ascontiguousarray(values, dtype=np.float64).ravel(), option=orjson.OPT_SERIALIZE_NUMPY)
        bounds = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == ord(","))
        bounds = np.concatenate([[0], bounds, [len(text) - 1]]) if values.size else np.zeros(1, dtype=np.int64)
        starts = bounds[:-1] + 1
        return text, _Pieces(starts.reshape(values.shape), (bounds[1:] - starts).reshape(values.shape))


class _Msgpack:
    """msgpack with floats as float32 (0xca and 4 big-endian bytes), as encode_intent_update packs them."""

    name = "msgpack"
    FLOAT32 = 0xCA

    def __init__(self) -> None:
        self.packer = msgpack.Packer(use_single_float=True)  # pack() holds the GIL: threads may share it
        self.value = self.packer.pack

    def map_start(self, size: int) -> bytes:
        return self.packer.pack_map_header(size)

    def map_end(self) -> bytes:
        return b""

    def key(self, position: int, name: str) -> bytes:
        return self.packer.pack(name)

    def array_start(self, size: int) -> bytes:
        return self.packer.pack_array_header(size)

    def array_end(self) -> bytes:
        return b""

    def before_entry(self, position: int) -> bytes:
        return b""

    def numbers(self, values: np.ndarray) -> tuple[bytes, _Pieces]:
        cells = np.empty((*values.shape, 5), dtype=np.uint8)
        cells[..., 0] = self.FLOAT32
        cells[..., 1:] = np.ascontiguousarray(values, dtype=">f4")[..., None].view(np.uint8)
        starts = 5 * np.arange(values.size, dtype=np.int64).reshape(values.shape)
        return cells.tobytes(), _Pieces(starts, np.full(values.shape, 5, dtype=np.int64))


_WIRES: dict[str, _Wire] = {"json": _Json(), "msgpack": _Msgpack()}


# ---------------------------------------------------------------------------------------------
# B messages assembled from pieces
# ---------------------------------------------------------------------------------------------


class _Messages:
    """B messages built side by side, piece after piece, from one byte pool."""

    def __init__(self, count: int, wire: _Wire):
        self.count = count
        self.wire = wire
        self._pool: list[bytes] = []
        self._pool_size = 0
        self._starts: list[np.ndarray] = []  # (B, m) each, in message order
        self._lengths: list[np.ndarray] = []
        self._constant = b""  # the same in every message, not yet added: consecutive ones make one piece

    def __len__(self) -> int:
        return self.count

    def stored(self, data: bytes, pieces: _Pieces) -> _Pieces:
        """`pieces` of `data`, once `data` is in the pool."""
        start = self._pool_size
        self._pool.append(data)
        self._pool_size += len(data)
        return pieces.moved(start)

    def constant(self, data: bytes) -> None:
        """Bytes that are the same in every message."""
        self._constant += data

    def per_message(self, pieces: Sequence[bytes]) -> None:
        """One piece per message: pieces[b] in message b."""
        data, column = _end_to_end(pieces)
        self.entries(1, self.stored(data, _Pieces(column.starts[:, None], column.lengths[:, None])))

    def numbers(self, values: np.ndarray) -> _Pieces:
        """A (B, m) column of floats, encoded."""
        return self.stored(*self.wire.numbers(values))

    def labels(self, top: TopLabels) -> _Pieces:
        """The encoded names of a (B, k) column of labels."""
        indices = np.asarray(top.indices)
        beyond = indices >= len(top.table)
        if top.extra is None or not beyond.any():  # an empty extra table has no name to stand in
            return self._names(top.table, indices)
        common = self._names(top.table, np.where(beyond, 0, indices))
        own = self._names(top.extra, np.where(beyond, indices - len(top.table), 0))
        return _Pieces(np.where(beyond, own.starts, common.starts), np.where(beyond, own.lengths, common.lengths))

    def _names(self, table: LabelTable, indices: np.ndarray) -> _Pieces:
        data, names = table.encoded(self.wire)
        return self.stored(data, _Pieces(names.starts[indices], names.lengths[indices]))

    def array(self, first: bytes, *rest: bytes | _Pieces) -> None:
        """An array of m entries per message: each entry is `first` (bytes) then `rest` (see
        `entries`); m is the width of the first of `rest` that has columns."""
        size = next(part.starts.shape[1] for part in rest if isinstance(part, _Pieces))
        self.constant(self.wire.array_start(size))
        self.entries(size, [self.wire.before_entry(j) + first for j in range(size)], *rest)
        self.constant(self.wire.array_end())

    def entries(self, size: int, *parts: bytes | list[bytes] | _Pieces) -> None:
        """`size` entries per message, entry j being `parts` in order: bytes (the same in every
        entry), a list of `size` bytes (entry j's own), or pieces of shape (B, size)."""
        if size == 0:
            return
        if self._constant:  # it goes before entry 0: into entry 0's own bytes, or as a piece of its own
            constant, self._constant = self._constant, b""
            if isinstance(parts[0], list):
                parts = ([constant + parts[0][0], *parts[0][1:]], *parts[1:])
            else:
                self._add(1, [constant])
        self._add(size, parts)

    def messages(self) -> list[bytes]:
        if self._constant:
            self._add(1, [self._constant])
        pool = np.frombuffer(b"".join(self._pool), dtype=np.uint8)
        lengths = np.concatenate(self._lengths, axis=1)
        message_ends = np.cumsum(lengths.sum(axis=1)).tolist()
        # int32 offsets halve the memory traffic of the gather, the costly part, where they suffice.
        offset = np.int32 if max(self._pool_size, message_ends[-1]) < 2**31 else np.int64
        lengths = lengths.ravel().astype(offset)
        starts = np.concatenate(self._starts, axis=1).ravel().astype(offset)
        piece_ends = np.cumsum(lengths)
        # Output byte i comes from pool[i + (its piece's start - where its piece begins in the output)].
        source = np.repeat(starts - (piece_ends - lengths), lengths) + np.arange(message_ends[-1], dtype=offset)
        data = pool[source].tobytes()
        return [data[start:end] for start, end in zip([0, *message_ends[:-1]], message_ends)]

    def _add(self, size: int, parts) -> None:
        columns = [self._as_pieces(part) for part in parts if part]  # empty bytes add nothing
        starts = np.empty((self.count, size, len(columns)), dtype=np.int64)
        lengths = np.empty_like(starts)
        for i, column in enumerate(columns):
            starts[..., i] = column.starts
            lengths[..., i] = column.lengths
        self._starts.append(starts.reshape(self.count, -1))
        self._lengths.append(lengths.reshape(self.count, -1))

    def _as_pieces(self, part: bytes | list[bytes] | _Pieces) -> _Pieces:
        if isinstance(part, _Pieces):
            return part
        if isinstance(part, bytes):
            return self.stored(part, _Pieces(np.zeros(1, dtype=np.int64), np.full(1, len(part), dtype=np.int64)))
        return self.stored(*_end_to_end(part))
