"""Bytes <-> contract values for the three IntentStream messages and the catalogue file's record.

PlayEvents and IntentUpdates travel as JSON (orjson) or msgpack, chosen per topic; dead letters are
always JSON, because people read the dead-letter topic (message bytes are base64 there). Catalogue
entries are records of a file, JSON or msgpack as a log's PlayEvents are.

Decoding is the per-event hot path, so it validates with plain Python checks: the common case (plain
types, within limits) in one pass, and anything else field by field, in the field order of the
dataclasses, stopping at the first problem with a ContractError. The JSON Schema files beside
this module publish the same rules for other languages; tests hold the two in agreement. Decisions:

- Epoch-ms fields (`ts`, `release_ts`, `scored_at`, `failed_at`) are integers in JSON Schema's
  sense: an int, or a float with no fractional part (what JavaScript producers send); the decoded
  value is always an int. Booleans are never numbers.
- `duration_s` accepts any finite number and decodes to a float.
- Unknown fields are ignored (forward compatibility); `device` may be absent or null.
- Encoders trust their typed input and do not validate it: they write every field, `device: null`
  included. Values must be plain Python types (call `.tolist()` on arrays first).
- In msgpack, IntentUpdate floats are packed as float32: the model computes in float32, so
  nothing is lost and the update is half the size. PlayEvents keep float64 so watch times round-trip.
- Only PlayEvents and catalogue entries have a size limit (MAX_MESSAGE_BYTES, checked before
  parsing): they come from outside. Updates and dead letters are written by IntentStream itself; a dead letter keeps at most
  the first MAX_DEAD_LETTER_VALUE_BYTES of a too-large message, with its size and SHA-256, so that
  it always fits in a Kafka message.
"""
from __future__ import annotations

import base64
import binascii
import math
from pathlib import Path

import msgpack
import orjson

from schemas.contracts import (
    KINDS,
    MAX_DURATION_S,
    MAX_GENRES,
    MAX_ID_CHARS,
    MAX_LABEL_CHARS,
    MAX_MESSAGE_BYTES,
    RELEASE_TS_MIN_MS,
    TS_MAX_MS,
    TS_MIN_MS,
    CatalogueEntry,
    DeadLetter,
    IntentUpdate,
    ItemScore,
    LabelScore,
    ModelRef,
    PlayEvent,
)

FORMATS = ("json", "msgpack")

NOT_DECODABLE = "not_decodable"  # not JSON / msgpack at all, or invalid UTF-8
NOT_AN_OBJECT = "not_an_object"  # the top level is not a map
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"  # also a boolean where a number is expected, NaN and infinities
UNKNOWN_ENUM = "unknown_enum"
TS_OUT_OF_RANGE = "ts_out_of_range"
VALUE_OUT_OF_RANGE = "value_out_of_range"
TOO_SHORT = "too_short"  # an empty id
TOO_LONG = "too_long"  # a string or a list over its limit
TOO_LARGE = "too_large"  # the whole message is over MAX_MESSAGE_BYTES
LATE = "late"  # the stream's verdict for an event later than the allowed lateness
FROM_FUTURE = "from_future"  # the stream's verdict for an event further ahead of its clock than allowed
ERROR_CODES = (
    NOT_DECODABLE,
    NOT_AN_OBJECT,
    MISSING_FIELD,
    WRONG_TYPE,
    UNKNOWN_ENUM,
    TS_OUT_OF_RANGE,
    VALUE_OUT_OF_RANGE,
    TOO_SHORT,
    TOO_LONG,
    TOO_LARGE,
    LATE,
    FROM_FUTURE,
)

SCHEMA_FILES = {
    "play_event": Path(__file__).parent / "play_event.schema.json",
    "intent_update": Path(__file__).parent / "intent_update.schema.json",
    "dead_letter": Path(__file__).parent / "dead_letter.schema.json",
    "catalogue_entry": Path(__file__).parent / "catalogue_entry.schema.json",
}


class ContractError(ValueError):
    """A message breaks its contract. `code` is one of ERROR_CODES and never changes meaning;
    `field` names the offending field (a path such as `genres[3]`), or is None for the whole
    message; `detail` says what is wrong in words."""

    def __init__(self, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(code, detail, field)  # keeps the error picklable
        self.code = code
        self.detail = detail
        self.field = field

    def __str__(self) -> str:
        where = "message" if self.field is None else f"field '{self.field}'"
        return f"{where}: {self.detail} [{self.code}]"


# ---------------------------------------------------------------------------------------------
# Formats, and bytes -> map
# ---------------------------------------------------------------------------------------------

def _unpack_msgpack(data: bytes) -> object:
    return msgpack.unpackb(data, raw=False, strict_map_key=True)


_PARSERS = {"json": orjson.loads, "msgpack": _unpack_msgpack}

# Packers are reused rather than built per call; pack() holds the GIL, so threads may share them.
_EVENT_PACKER = msgpack.Packer()
_UPDATE_PACKER = msgpack.Packer(use_single_float=True)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown wire format {fmt!r}; expected one of {FORMATS}")


def _parse_map(data: bytes | None, fmt: str, max_bytes: int | None) -> dict:
    _check_format(fmt)
    if data is None:  # a Kafka tombstone
        raise ContractError(NOT_DECODABLE, "the message has no value")
    if max_bytes is not None and len(data) > max_bytes:
        raise ContractError(TOO_LARGE, f"{len(data)} bytes, limit {max_bytes}")
    try:
        value = _PARSERS[fmt](data)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        reason = str(exc) or type(exc).__name__
        raise ContractError(NOT_DECODABLE, f"not valid {fmt}: {reason}") from None
    if not isinstance(value, dict):
        raise ContractError(NOT_AN_OBJECT, f"the top level is {_wire_type(value)}, expected a map")
    return value


# ---------------------------------------------------------------------------------------------
# Field checks: each takes the value and the field's name, returns the decoded value or raises
# ---------------------------------------------------------------------------------------------

_WIRE_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
    list: "an array",
    dict: "a map",
    bytes: "binary",
}


def _wire_type(value: object) -> str:
    return _WIRE_TYPE_NAMES.get(type(value), type(value).__name__)


def _wrong_type(field: str, expected: str, value: object) -> ContractError:
    return ContractError(WRONG_TYPE, f"expected {expected}, got {_wire_type(value)}", field)


def _required(mapping: dict, key: str, field: str | None = None) -> object:
    try:
        return mapping[key]
    except KeyError:
        raise ContractError(MISSING_FIELD, "required field is missing", field or key) from None


def _string(value: object, field: str, max_chars: int | None = None, min_chars: int = 0) -> str:
    if not isinstance(value, str):
        raise _wrong_type(field, "a string", value)
    if max_chars is not None and len(value) > max_chars:
        raise ContractError(TOO_LONG, f"{len(value)} characters, limit {max_chars}", field)
    if len(value) < min_chars:
        raise ContractError(TOO_SHORT, f"{len(value)} characters, needs at least {min_chars}", field)
    return value


def _id(value: object, field: str) -> str:
    return _string(value, field, MAX_ID_CHARS, min_chars=1)


def _number(value: object, field: str) -> float:
    # type() rather than isinstance(): bool is a subclass of int, and never a number on the wire.
    if type(value) is float:
        if not math.isfinite(value):
            raise ContractError(WRONG_TYPE, f"expected a finite number, got {value}", field)
        return value
    if type(value) is int:
        return float(value)
    raise _wrong_type(field, "a number", value)


def _bounded_number(value: object, field: str, lowest: float, highest: float) -> float:
    number = _number(value, field)
    if not lowest <= number <= highest:
        raise ContractError(VALUE_OUT_OF_RANGE, f"{number} is outside [{lowest}, {highest}]", field)
    return number


def _is_integer(value: object) -> bool:
    """An integer as JSON Schema counts them: 3 and 3.0, never 3.5 or True."""
    return type(value) is int or (type(value) is float and value.is_integer())


def _epoch_ms(value: object, field: str, lowest: int, highest: int) -> int:
    if not _is_integer(value):
        raise _wrong_type(field, "an integer (epoch ms)", value)
    if not lowest <= value <= highest:
        raise ContractError(TS_OUT_OF_RANGE, f"{value} is outside [{lowest}, {highest}] epoch ms", field)
    return int(value)


def _list(value: object, field: str, max_items: int | None = None) -> list:
    if not isinstance(value, list):
        raise _wrong_type(field, "an array", value)
    if max_items is not None and len(value) > max_items:
        raise ContractError(TOO_LONG, f"{len(value)} items, limit {max_items}", field)
    return value


def _optional(check, value: object, field: str, *limits):
    """`check(value, field, *limits)`, or None where the value is null."""
    return None if value is None else check(value, field, *limits)


def _map(value: object, field: str) -> dict:
    if not isinstance(value, dict):
        raise _wrong_type(field, "a map", value)
    return value


# ---------------------------------------------------------------------------------------------
# PlayEvent
# ---------------------------------------------------------------------------------------------

def _genres(value: object) -> tuple[str, ...]:
    genres = _list(value, "genres", MAX_GENRES)
    for position, genre in enumerate(genres):
        if not isinstance(genre, str) or len(genre) > MAX_LABEL_CHARS:
            _string(genre, f"genres[{position}]", MAX_LABEL_CHARS)  # raises with the field's path
    return tuple(genres)


def _kind(value: object) -> str:
    if not isinstance(value, str):
        raise _wrong_type("kind", "a string", value)
    if value not in KINDS:
        shown = value if len(value) <= MAX_LABEL_CHARS else value[:MAX_LABEL_CHARS] + "..."
        raise ContractError(UNKNOWN_ENUM, f"{shown!r} is not one of {', '.join(KINDS)}", "kind")
    return value


def decode_play_event(data: bytes, fmt: str) -> PlayEvent:
    """Decode and validate one PlayEvent. Raises ContractError for any bytes that break the
    contract (ValueError only for a `fmt` outside FORMATS)."""
    event = _parse_map(data, fmt, MAX_MESSAGE_BYTES)
    return _plain_play_event(event) or _checked_play_event(event)


def _plain_play_event(event: dict) -> PlayEvent | None:
    """The common case in one pass (the stream decodes every event): every field present, of its
    plain type (ints for times, a float watch time) and within its limits. None for anything else,
    which `_checked_play_event` then accepts or explains; this accepts nothing that one refuses
    (tests hold the two in agreement)."""
    try:
        event_id, user_id, item_id, ts = event["event_id"], event["user_id"], event["item_id"], event["ts"]
        action, genres, kind = event["action"], event["genres"], event["kind"]
        release_ts, duration_s = event["release_ts"], event["duration_s"]
    except KeyError:
        return None
    device = event.get("device")
    plain = (
        type(event_id) is str and 0 < len(event_id) <= MAX_ID_CHARS
        and type(user_id) is str and 0 < len(user_id) <= MAX_ID_CHARS
        and type(item_id) is str and 0 < len(item_id) <= MAX_ID_CHARS
        and type(ts) is int and TS_MIN_MS <= ts <= TS_MAX_MS
        and type(action) is str and len(action) <= MAX_LABEL_CHARS
        and type(genres) is list and len(genres) <= MAX_GENRES
        and type(kind) is str and kind in KINDS
        and (release_ts is None or (type(release_ts) is int and RELEASE_TS_MIN_MS <= release_ts <= TS_MAX_MS))
        and type(duration_s) is float and 0.0 <= duration_s <= MAX_DURATION_S  # NaN fails the comparison
        and (device is None or (type(device) is str and len(device) <= MAX_LABEL_CHARS))
    )  # fmt: skip
    if not plain:
        return None
    for genre in genres:
        if type(genre) is not str or len(genre) > MAX_LABEL_CHARS:
            return None
    return PlayEvent(event_id, user_id, item_id, ts, action, tuple(genres), kind, release_ts, duration_s, device)


def _checked_play_event(event: dict) -> PlayEvent:
    """Every field checked in order, the first problem raised as a ContractError."""
    return PlayEvent(
        event_id=_id(_required(event, "event_id"), "event_id"),
        user_id=_id(_required(event, "user_id"), "user_id"),
        item_id=_id(_required(event, "item_id"), "item_id"),
        ts=_epoch_ms(_required(event, "ts"), "ts", TS_MIN_MS, TS_MAX_MS),
        action=_string(_required(event, "action"), "action", MAX_LABEL_CHARS),
        genres=_genres(_required(event, "genres")),
        kind=_kind(_required(event, "kind")),
        release_ts=_optional(
            _epoch_ms, _required(event, "release_ts"), "release_ts", RELEASE_TS_MIN_MS, TS_MAX_MS
        ),
        duration_s=_bounded_number(_required(event, "duration_s"), "duration_s", 0.0, MAX_DURATION_S),
        device=_optional(_string, event.get("device"), "device", MAX_LABEL_CHARS),
    )


def encode_play_event(event: PlayEvent, fmt: str) -> bytes:
    """Encode a PlayEvent (every field, `device: null` included)."""
    _check_format(fmt)
    if fmt == "json":
        return orjson.dumps(event)  # orjson writes a dataclass's fields in order, natively
    return _EVENT_PACKER.pack(
        {
            "event_id": event.event_id,
            "user_id": event.user_id,
            "item_id": event.item_id,
            "ts": event.ts,
            "action": event.action,
            "genres": event.genres,
            "kind": event.kind,
            "release_ts": event.release_ts,
            "duration_s": event.duration_s,
            "device": event.device,
        }
    )


# ---------------------------------------------------------------------------------------------
# CatalogueEntry
# ---------------------------------------------------------------------------------------------

def decode_catalogue_entry(data: bytes, fmt: str) -> CatalogueEntry:
    """Decode and validate one CatalogueEntry, field by field as a PlayEvent's fields of the same
    names. Raises ContractError for any bytes that break the contract."""
    entry = _parse_map(data, fmt, MAX_MESSAGE_BYTES)
    return CatalogueEntry(
        item_id=_id(_required(entry, "item_id"), "item_id"),
        kind=_kind(_required(entry, "kind")),
        genres=_genres(_required(entry, "genres")),
        release_ts=_optional(
            _epoch_ms, _required(entry, "release_ts"), "release_ts", RELEASE_TS_MIN_MS, TS_MAX_MS
        ),
    )


def encode_catalogue_entry(entry: CatalogueEntry, fmt: str) -> bytes:
    """Encode a CatalogueEntry (every field, `release_ts: null` included)."""
    _check_format(fmt)
    if fmt == "json":
        return orjson.dumps(entry)
    return _EVENT_PACKER.pack(
        {"item_id": entry.item_id, "kind": entry.kind, "genres": entry.genres, "release_ts": entry.release_ts}
    )


# ---------------------------------------------------------------------------------------------
# IntentUpdate
# ---------------------------------------------------------------------------------------------

def _model_ref(value: object) -> ModelRef:
    model = _map(value, "model")
    return ModelRef(
        name=_string(_required(model, "name", "model.name"), "model.name"),
        version=_string(_required(model, "version", "model.version"), "model.version"),
    )


def _probability(value: object, field: str) -> float:
    return _bounded_number(value, field, 0.0, 1.0)


def _intents(value: object) -> dict[str, tuple[LabelScore, ...]]:
    intents = {}
    for task, scores in _map(value, "intents").items():
        _string(task, "intents (a task name)")
        top_labels = []
        for position, score in enumerate(_list(scores, f"intents.{task}")):
            field = f"intents.{task}[{position}]"
            label_score = _map(score, field)
            top_labels.append(
                LabelScore(
                    label=_string(_required(label_score, "label", f"{field}.label"), f"{field}.label"),
                    p=_probability(_required(label_score, "p", f"{field}.p"), f"{field}.p"),
                )
            )
        intents[task] = tuple(top_labels)
    return intents


def _intent_weights(value: object) -> dict[str, float]:
    return {
        _string(task, "intent_weights (a task name)"): _probability(weight, f"intent_weights.{task}")
        for task, weight in _map(value, "intent_weights").items()
    }


def _embedding(value: object) -> tuple[float, ...]:
    values = _list(value, "intent_embedding")
    return tuple(_number(number, f"intent_embedding[{position}]") for position, number in enumerate(values))


def _next_items(value: object) -> tuple[ItemScore, ...]:
    items = []
    for position, entry in enumerate(_list(value, "next_items")):
        field = f"next_items[{position}]"
        item = _map(entry, field)
        items.append(
            ItemScore(
                item_id=_id(_required(item, "item_id", f"{field}.item_id"), f"{field}.item_id"),
                score=_number(_required(item, "score", f"{field}.score"), f"{field}.score"),
            )
        )
    return tuple(items)


def decode_intent_update(data: bytes, fmt: str) -> IntentUpdate:
    """Decode and validate one IntentUpdate (for consumers, tests and backtests)."""
    update = _parse_map(data, fmt, max_bytes=None)
    return IntentUpdate(
        user_id=_id(_required(update, "user_id"), "user_id"),
        event_id=_id(_required(update, "event_id"), "event_id"),
        ts=_epoch_ms(_required(update, "ts"), "ts", TS_MIN_MS, TS_MAX_MS),
        model=_model_ref(_required(update, "model")),
        scored_at=_epoch_ms(_required(update, "scored_at"), "scored_at", TS_MIN_MS, TS_MAX_MS),
        intent_embedding=_embedding(_required(update, "intent_embedding")),
        intents=_intents(_required(update, "intents")),
        intent_weights=_intent_weights(_required(update, "intent_weights")),
        next_items=_next_items(_required(update, "next_items")),
    )


def encode_intent_update(update: IntentUpdate, fmt: str) -> bytes:
    """Encode an IntentUpdate; msgpack packs its floats as float32 (see the module docstring)."""
    _check_format(fmt)
    if fmt == "json":
        return orjson.dumps(update)  # nested dataclasses, tuples and dicts are native to orjson
    return _UPDATE_PACKER.pack(
        {
            "user_id": update.user_id,
            "event_id": update.event_id,
            "ts": update.ts,
            "model": {"name": update.model.name, "version": update.model.version},
            "scored_at": update.scored_at,
            "intent_embedding": update.intent_embedding,
            "intents": {
                task: [{"label": score.label, "p": score.p} for score in scores]
                for task, scores in update.intents.items()
            },
            "intent_weights": update.intent_weights,
            "next_items": [{"item_id": item.item_id, "score": item.score} for item in update.next_items],
        }
    )


# ---------------------------------------------------------------------------------------------
# DeadLetter (always JSON)
# ---------------------------------------------------------------------------------------------

def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


def _unb64(value: object, field: str) -> bytes:
    text = _string(value, field)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ContractError(WRONG_TYPE, "expected base64 text", field) from None


def _offset(value: object, field: str) -> int:
    if not _is_integer(value):
        raise _wrong_type(field, "an integer", value)
    if value < 0:
        raise ContractError(VALUE_OUT_OF_RANGE, f"{value} is negative", field)
    return int(value)


def encode_dead_letter(dead_letter: DeadLetter) -> bytes:
    """Encode a DeadLetter as JSON, the message's key and bytes as base64."""
    return orjson.dumps(
        {
            "code": dead_letter.code,
            "detail": dead_letter.detail,
            "source_topic": dead_letter.source_topic,
            "partition": dead_letter.partition,
            "offset": dead_letter.offset,
            "key_b64": _b64(dead_letter.key),
            "key_size": dead_letter.key_size,
            "value_b64": _b64(dead_letter.value),
            "value_size": dead_letter.value_size,
            "value_sha256": dead_letter.value_sha256,
            "failed_at": dead_letter.failed_at,
        }
    )


def decode_dead_letter(data: bytes) -> DeadLetter:
    """Decode one DeadLetter (JSON), e.g. to replay it."""
    letter = _parse_map(data, "json", max_bytes=None)
    code = _string(_required(letter, "code"), "code")
    if code not in ERROR_CODES:
        raise ContractError(UNKNOWN_ENUM, f"{code[:MAX_LABEL_CHARS]!r} is not an error code", "code")
    return DeadLetter(
        code=code,
        detail=_string(_required(letter, "detail"), "detail"),
        source_topic=_optional(_string, _required(letter, "source_topic"), "source_topic"),
        partition=_optional(_offset, _required(letter, "partition"), "partition"),
        offset=_optional(_offset, _required(letter, "offset"), "offset"),
        key=_optional(_unb64, _required(letter, "key_b64"), "key_b64"),
        value=_unb64(_required(letter, "value_b64"), "value_b64"),
        failed_at=_epoch_ms(_required(letter, "failed_at"), "failed_at", TS_MIN_MS, TS_MAX_MS),
        key_size=_optional(_offset, _required(letter, "key_size"), "key_size"),
        value_size=_offset(_required(letter, "value_size"), "value_size"),
        value_sha256=_string(_required(letter, "value_sha256"), "value_sha256"),
    )
