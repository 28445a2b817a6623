"""The wire contracts: codec round trips, error codes, and agreement with the JSON Schema files."""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import pickle
import struct

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from schemas import (
    ERROR_CODES,
    FORMATS,
    KINDS,
    FROM_FUTURE,
    LATE,
    MAX_DURATION_S,
    MAX_GENRES,
    MAX_ID_CHARS,
    MAX_LABEL_CHARS,
    MAX_DEAD_LETTER_KEY_BYTES,
    MAX_DEAD_LETTER_VALUE_BYTES,
    MAX_MESSAGE_BYTES,
    MISSING_FIELD,
    NOT_AN_OBJECT,
    NOT_DECODABLE,
    RELEASE_TS_MIN_MS,
    SCHEMA_FILES,
    TOO_LARGE,
    TOO_LONG,
    TOO_SHORT,
    TS_MAX_MS,
    TS_MIN_MS,
    TS_OUT_OF_RANGE,
    UNKNOWN_ENUM,
    VALUE_OUT_OF_RANGE,
    WRONG_TYPE,
    ContractError,
    DeadLetter,
    IntentUpdate,
    ItemScore,
    LabelScore,
    ModelRef,
    PlayEvent,
    decode_dead_letter,
    decode_intent_update,
    decode_play_event,
    encode_dead_letter,
    encode_intent_update,
    encode_play_event,
)
from schemas.codec import _checked_play_event, _plain_play_event  # the decoder's two paths

FUZZ = settings(max_examples=300, deadline=None)


def load_schema(name: str) -> dict:
    return json.loads(SCHEMA_FILES[name].read_text())


VALIDATORS = {name: Draft202012Validator(load_schema(name)) for name in SCHEMA_FILES}

VALID_EVENT = PlayEvent(
    event_id="ev-000001",
    user_id="u-42",
    item_id="show-7:s1e3",
    ts=1_700_000_000_000,
    action="continue",
    genres=("drama", "thriller"),
    kind="show",
    release_ts=1_600_000_000_000,
    duration_s=1520.5,
    device="tv",
)

DELETE = object()  # marks a field to remove in event_map()


def event_map(**changes: object) -> dict:
    """VALID_EVENT as the map a producer writes, with some fields changed or deleted."""
    fields = {
        "event_id": VALID_EVENT.event_id,
        "user_id": VALID_EVENT.user_id,
        "item_id": VALID_EVENT.item_id,
        "ts": VALID_EVENT.ts,
        "action": VALID_EVENT.action,
        "genres": list(VALID_EVENT.genres),
        "kind": VALID_EVENT.kind,
        "release_ts": VALID_EVENT.release_ts,
        "duration_s": VALID_EVENT.duration_s,
        "device": VALID_EVENT.device,
    }
    for name, value in changes.items():
        if value is DELETE:
            del fields[name]
        else:
            fields[name] = value
    return fields


def encode_map(fields: dict, fmt: str) -> bytes:
    return orjson.dumps(fields) if fmt == "json" else msgpack.packb(fields)


def wire_to_dict(data: bytes, fmt: str) -> object:
    return orjson.loads(data) if fmt == "json" else msgpack.unpackb(data)


def float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def sample_update() -> IntentUpdate:
    return IntentUpdate(
        user_id="u-42",
        event_id="ev-000001",
        ts=1_700_000_000_000,
        model=ModelRef(name="intentrec-V3", version="2024-08-01.3"),
        scored_at=1_700_000_000_250,
        intent_embedding=(0.1, -0.25, 3.0, 0.0),
        intents={
            "action": (LabelScore("continue", 0.7), LabelScore("discover", 0.2)),
            "genre": (LabelScore("drama", 0.9),),
            "kind": (),
        },
        intent_weights={"action": 0.6, "genre": 0.3, "kind": 0.1},
        next_items=(ItemScore("show-7:s1e4", 12.5), ItemScore("movie-3", -1.1)),
    )


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------

ROUND_TRIP_EVENTS = [
    VALID_EVENT,
    PlayEvent("e", "u", "i", 0, "", (), "movie", None, 0.0),  # smallest values, no device
    PlayEvent(
        event_id="é" * MAX_ID_CHARS,  # limits count characters, not bytes
        user_id="用户" * (MAX_ID_CHARS // 2),
        item_id="i" * MAX_ID_CHARS,
        ts=TS_MAX_MS,
        action="a" * MAX_LABEL_CHARS,
        genres=tuple("g" * MAX_LABEL_CHARS for _ in range(MAX_GENRES)),
        kind="movie",
        release_ts=RELEASE_TS_MIN_MS,
        duration_s=MAX_DURATION_S,
        device="d" * MAX_LABEL_CHARS,
    ),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("event", ROUND_TRIP_EVENTS)
def test_play_event_round_trip(event: PlayEvent, fmt: str) -> None:
    decoded = decode_play_event(encode_play_event(event, fmt), fmt)
    assert decoded == event
    assert isinstance(decoded.genres, tuple)


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_fields_are_ignored_and_device_may_be_absent(fmt: str) -> None:
    fields = event_map(device=DELETE, schema_version=3, experiment={"arm": "b"})
    assert decode_play_event(encode_map(fields, fmt), fmt) == PlayEvent(
        **{**event_map(device=None), "genres": VALID_EVENT.genres}
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_numbers_decode_to_their_contract_types(fmt: str) -> None:
    # An epoch ms written as a float with no fraction (as JavaScript does) is an integer;
    # an integer watch time is a float.
    fields = event_map(ts=1_700_000_000_000.0, release_ts=-86_400_000.0, duration_s=30)
    event = decode_play_event(encode_map(fields, fmt), fmt)
    assert (event.ts, event.release_ts, event.duration_s) == (1_700_000_000_000, -86_400_000, 30.0)
    assert type(event.ts) is int and type(event.release_ts) is int and type(event.duration_s) is float


def test_intent_update_json_round_trip_is_exact() -> None:
    update = sample_update()
    assert decode_intent_update(encode_intent_update(update, "json"), "json") == update


def test_intent_update_msgpack_round_trip_carries_float32() -> None:
    update = sample_update()
    data = encode_intent_update(update, "msgpack")
    decoded = decode_intent_update(data, "msgpack")

    assert decoded.intent_embedding == tuple(float32(v) for v in update.intent_embedding)
    assert decoded.intent_embedding[0] != 0.1  # really float32, not float64
    assert decoded.intent_weights == {task: float32(w) for task, w in update.intent_weights.items()}
    assert decoded.intents == {
        task: tuple(LabelScore(s.label, float32(s.p)) for s in scores)
        for task, scores in update.intents.items()
    }
    assert decoded.next_items == tuple(ItemScore(i.item_id, float32(i.score)) for i in update.next_items)
    assert (decoded.user_id, decoded.event_id, decoded.ts, decoded.model, decoded.scored_at) == (
        update.user_id,
        update.event_id,
        update.ts,
        update.model,
        update.scored_at,
    )
    # A float32 value survives the trip exactly, which is what the model produces.
    assert decode_intent_update(encode_intent_update(decoded, "msgpack"), "msgpack") == decoded


@pytest.mark.parametrize("key", [None, b"u-42", b""])
def test_dead_letter_round_trip_is_readable_json(key: bytes | None) -> None:
    letter = DeadLetter(
        code=WRONG_TYPE,
        detail="field 'ts': expected an integer (epoch ms), got a string [wrong_type]",
        source_topic="plays",
        partition=3,
        offset=1234,
        key=key,
        value=b"\x93\xff\x00not utf-8",
        failed_at=1_700_000_000_999,
    )
    data = encode_dead_letter(letter)
    assert decode_dead_letter(data) == letter
    readable = json.loads(data)  # any JSON reader can open it
    assert readable["source_topic"] == "plays" and readable["code"] == WRONG_TYPE


def test_dead_letter_without_a_source() -> None:
    letter = DeadLetter(code=LATE, detail="late", source_topic=None, partition=None, offset=None,
                        key=None, value=b"")
    assert decode_dead_letter(encode_dead_letter(letter)) == letter


# ---------------------------------------------------------------------------------------------
# Error codes: one case per code (and per way to break a field), each naming its field
# ---------------------------------------------------------------------------------------------

def msgpack_with_invalid_utf8_user_id() -> bytes:
    data = msgpack.packb(event_map(user_id="u-4€"))
    return data.replace("€".encode(), b"\xff\xfe\xfd")


ERROR_CASES = [
    # (code, field, format, bytes)
    (NOT_DECODABLE, None, "json", b"{not json"),
    (NOT_DECODABLE, None, "json", b'{"user_id": "\xff"}'),
    (NOT_DECODABLE, None, "json", b""),
    (NOT_DECODABLE, None, "json", None),
    (NOT_DECODABLE, None, "msgpack", b"\xc1"),
    (NOT_DECODABLE, None, "msgpack", b"\x82\xa1a"),  # truncated
    (NOT_DECODABLE, None, "msgpack", msgpack_with_invalid_utf8_user_id()),
    (NOT_DECODABLE, None, "msgpack", msgpack.packb({1: "integer keys"})),
    (NOT_AN_OBJECT, None, "json", b"[1, 2]"),
    (NOT_AN_OBJECT, None, "msgpack", msgpack.packb("just a string")),
    (MISSING_FIELD, "user_id", "json", encode_map(event_map(user_id=DELETE), "json")),
    (MISSING_FIELD, "release_ts", "msgpack", encode_map(event_map(release_ts=DELETE), "msgpack")),
    (WRONG_TYPE, "ts", "json", encode_map(event_map(ts="1700000000000"), "json")),
    (WRONG_TYPE, "ts", "msgpack", encode_map(event_map(ts=True), "msgpack")),
    (WRONG_TYPE, "ts", "json", encode_map(event_map(ts=1_700_000_000_000.5), "json")),
    (WRONG_TYPE, "duration_s", "msgpack", encode_map(event_map(duration_s=math.nan), "msgpack")),
    (WRONG_TYPE, "duration_s", "msgpack", encode_map(event_map(duration_s=math.inf), "msgpack")),
    (WRONG_TYPE, "duration_s", "json", encode_map(event_map(duration_s=False), "json")),
    (WRONG_TYPE, "genres", "json", encode_map(event_map(genres="drama"), "json")),
    (WRONG_TYPE, "genres[1]", "msgpack", encode_map(event_map(genres=["drama", 7]), "msgpack")),
    (WRONG_TYPE, "item_id", "msgpack", encode_map(event_map(item_id=b"bytes"), "msgpack")),
    (WRONG_TYPE, "kind", "json", encode_map(event_map(kind=None), "json")),
    (UNKNOWN_ENUM, "kind", "json", encode_map(event_map(kind="podcast"), "json")),
    (UNKNOWN_ENUM, "kind", "msgpack", encode_map(event_map(kind="Movie"), "msgpack")),
    (TS_OUT_OF_RANGE, "ts", "json", encode_map(event_map(ts=-1), "json")),
    (TS_OUT_OF_RANGE, "ts", "msgpack", encode_map(event_map(ts=TS_MAX_MS + 1), "msgpack")),
    (TS_OUT_OF_RANGE, "ts", "msgpack", encode_map(event_map(ts=2**64 - 1), "msgpack")),
    (TS_OUT_OF_RANGE, "release_ts", "json", encode_map(event_map(release_ts=RELEASE_TS_MIN_MS - 1), "json")),
    (VALUE_OUT_OF_RANGE, "duration_s", "json", encode_map(event_map(duration_s=-0.5), "json")),
    (VALUE_OUT_OF_RANGE, "duration_s", "msgpack",
     encode_map(event_map(duration_s=MAX_DURATION_S + 1), "msgpack")),
    (TOO_SHORT, "event_id", "json", encode_map(event_map(event_id=""), "json")),
    (TOO_LONG, "user_id", "json", encode_map(event_map(user_id="u" * (MAX_ID_CHARS + 1)), "json")),
    (TOO_LONG, "genres", "msgpack", encode_map(event_map(genres=["g"] * (MAX_GENRES + 1)), "msgpack")),
    (TOO_LONG, "genres[0]", "json", encode_map(event_map(genres=["g" * (MAX_LABEL_CHARS + 1)]), "json")),
    (TOO_LONG, "device", "msgpack", encode_map(event_map(device="d" * (MAX_LABEL_CHARS + 1)), "msgpack")),
    (TOO_LARGE, None, "json", encode_map(event_map(note="x" * MAX_MESSAGE_BYTES), "json")),
    (TOO_LARGE, None, "msgpack", b"\xc1" * (MAX_MESSAGE_BYTES + 1)),  # checked before parsing
]


@pytest.mark.parametrize(
    ("code", "field", "fmt", "data"),
    ERROR_CASES,
    ids=[f"{code}-{field}-{fmt}-{i}" for i, (code, field, fmt, _) in enumerate(ERROR_CASES)],
)
def test_decode_play_event_error(code: str, field: str | None, fmt: str, data: bytes) -> None:
    with pytest.raises(ContractError) as raised:
        decode_play_event(data, fmt)
    error = raised.value
    assert (error.code, error.field) == (code, field)
    assert code in ERROR_CODES
    message = str(error)
    assert (f"field '{field}'" if field else "message") in message
    assert error.detail in message


def test_every_decoder_error_code_is_exercised() -> None:
    assert {case[0] for case in ERROR_CASES} == set(ERROR_CODES) - {LATE, FROM_FUTURE}  # the stream's verdicts


def test_error_codes_are_unique_and_published_in_the_dead_letter_schema() -> None:
    assert len(set(ERROR_CODES)) == len(ERROR_CODES)
    assert LATE in ERROR_CODES and FROM_FUTURE in ERROR_CODES
    assert load_schema("dead_letter")["properties"]["code"]["enum"] == list(ERROR_CODES)


def test_contract_error_survives_pickling() -> None:
    error = ContractError(TOO_LONG, "129 characters, limit 128", "user_id")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.field, copy.detail) == (error.code, error.field, error.detail)
    assert str(copy) == str(error)


def test_unknown_format_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown wire format") as raised:
        decode_play_event(encode_play_event(VALID_EVENT, "json"), "avro")
    assert not isinstance(raised.value, ContractError)


def intent_update_map(**changes: object) -> dict:
    fields = orjson.loads(encode_intent_update(sample_update(), "json"))
    fields.update(changes)
    return fields


@pytest.mark.parametrize(
    ("code", "field", "fmt", "data"),
    [
        (MISSING_FIELD, "model.version", "json", orjson.dumps(intent_update_map(model={"name": "m"}))),
        (VALUE_OUT_OF_RANGE, "intents.genre[0].p", "json",
         orjson.dumps(intent_update_map(intents={"genre": [{"label": "drama", "p": 1.5}]}))),
        (WRONG_TYPE, "intent_embedding[1]", "msgpack",
         msgpack.packb(intent_update_map(intent_embedding=[0.0, math.nan]))),
        (TOO_SHORT, "next_items[0].item_id", "msgpack",
         msgpack.packb(intent_update_map(next_items=[{"item_id": "", "score": 1.0}]))),
        (WRONG_TYPE, "intent_weights.genre", "json",
         orjson.dumps(intent_update_map(intent_weights={"genre": "high"}))),
        (NOT_AN_OBJECT, None, "msgpack", msgpack.packb([1])),
    ],
)
def test_decode_intent_update_error(code: str, field: str | None, fmt: str, data: bytes) -> None:
    with pytest.raises(ContractError) as raised:
        decode_intent_update(data, fmt)
    assert (raised.value.code, raised.value.field) == (code, field)


def dead_letter_map(**changes: object) -> dict:
    letter = DeadLetter(WRONG_TYPE, "detail", "plays", 0, 7, b"k", b"v", 1_700_000_000_000)
    return {**orjson.loads(encode_dead_letter(letter)), **changes}


@pytest.mark.parametrize(
    ("code", "field", "fields"),
    [
        (WRONG_TYPE, "value_b64", dead_letter_map(value_b64="not base64!")),
        (WRONG_TYPE, "key_b64", dead_letter_map(key_b64="abc")),  # bad padding
        (UNKNOWN_ENUM, "code", dead_letter_map(code="exploded")),
        (VALUE_OUT_OF_RANGE, "offset", dead_letter_map(offset=-1)),
        (MISSING_FIELD, "failed_at", {k: v for k, v in dead_letter_map().items() if k != "failed_at"}),
    ],
)
def test_decode_dead_letter_error(code: str, field: str, fields: dict) -> None:
    with pytest.raises(ContractError) as raised:
        decode_dead_letter(orjson.dumps(fields))
    assert (raised.value.code, raised.value.field) == (code, field)
    assert not VALIDATORS["dead_letter"].is_valid(fields)


# ---------------------------------------------------------------------------------------------
# The schema files: valid JSON Schema, the contract's limits, and what the codec writes
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_schema_files_are_valid_draft_2020_12(name: str) -> None:
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_play_event_schema_has_the_contract_limits() -> None:
    properties = load_schema("play_event")["properties"]
    for name in ("event_id", "user_id", "item_id"):
        assert (properties[name]["minLength"], properties[name]["maxLength"]) == (1, MAX_ID_CHARS)
    for limited in (properties["action"], properties["device"], properties["genres"]["items"]):
        assert limited["maxLength"] == MAX_LABEL_CHARS
    assert properties["genres"]["maxItems"] == MAX_GENRES
    assert (properties["ts"]["minimum"], properties["ts"]["maximum"]) == (TS_MIN_MS, TS_MAX_MS)
    release_ts = properties["release_ts"]
    assert (release_ts["minimum"], release_ts["maximum"]) == (RELEASE_TS_MIN_MS, TS_MAX_MS)
    assert (properties["duration_s"]["minimum"], properties["duration_s"]["maximum"]) == (0, MAX_DURATION_S)
    assert properties["kind"]["enum"] == list(KINDS)
    assert str(MAX_MESSAGE_BYTES) in load_schema("play_event")["description"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("event", ROUND_TRIP_EVENTS)
def test_encoded_play_events_match_the_schema(event: PlayEvent, fmt: str) -> None:
    VALIDATORS["play_event"].validate(wire_to_dict(encode_play_event(event, fmt), fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_encoded_intent_updates_match_the_schema(fmt: str) -> None:
    VALIDATORS["intent_update"].validate(wire_to_dict(encode_intent_update(sample_update(), fmt), fmt))


def test_encoded_dead_letters_match_the_schema() -> None:
    for key in (None, b"", b"u-1", b"\xff\x00"):
        letter = DeadLetter(TOO_LARGE, "too big", "plays", 0, 0, key, b"\x00" * 20_000, 1)
        VALIDATORS["dead_letter"].validate(orjson.loads(encode_dead_letter(letter)))


# Every map here breaks the contract; both the codec (in both formats) and the schema must say so.
INVALID_EVENT_MAPS = [
    event_map(event_id=DELETE),
    event_map(duration_s=DELETE),
    event_map(event_id=""),
    event_map(user_id=42),
    event_map(item_id="i" * (MAX_ID_CHARS + 1)),
    event_map(ts=None),
    event_map(ts="1700000000000"),
    event_map(ts=1.5),
    event_map(ts=True),
    event_map(ts=-1),
    event_map(ts=TS_MAX_MS + 1),
    event_map(action=["discover"]),
    event_map(action="a" * (MAX_LABEL_CHARS + 1)),
    event_map(genres=None),
    event_map(genres=[None]),
    event_map(genres=["g"] * (MAX_GENRES + 1)),
    event_map(genres=["g" * (MAX_LABEL_CHARS + 1)]),
    event_map(kind="series"),
    event_map(kind=1),
    event_map(release_ts="2020"),
    event_map(release_ts=RELEASE_TS_MIN_MS - 1),
    event_map(release_ts=TS_MAX_MS + 1),
    event_map(duration_s="90"),
    event_map(duration_s=-1),
    event_map(duration_s=MAX_DURATION_S + 0.5),
    event_map(device=7),
    event_map(device="d" * (MAX_LABEL_CHARS + 1)),
]


@pytest.mark.parametrize("fields", INVALID_EVENT_MAPS)
def test_codec_and_schema_agree_on_invalid_events(fields: dict) -> None:
    assert not VALIDATORS["play_event"].is_valid(fields)
    for fmt in FORMATS:
        with pytest.raises(ContractError):
            decode_play_event(encode_map(fields, fmt), fmt)


# Edge cases that are valid for both.
VALID_EVENT_MAPS = [
    event_map(device=DELETE),
    event_map(device=None, release_ts=None, genres=[]),
    event_map(ts=float(TS_MAX_MS), duration_s=0),
    event_map(extra={"nested": [1, None, "x"]}, v=2),
]


@pytest.mark.parametrize("fields", VALID_EVENT_MAPS)
def test_codec_and_schema_agree_on_valid_edge_cases(fields: dict) -> None:
    assert VALIDATORS["play_event"].is_valid(fields)
    for fmt in FORMATS:
        decode_play_event(encode_map(fields, fmt), fmt)


# ---------------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------------

def decode_or_contract_error(data: bytes, fmt: str) -> PlayEvent | None:
    """The decoded event, or None where the codec raised ContractError; anything else fails."""
    try:
        return decode_play_event(data, fmt)
    except ContractError:
        return None


ids = st.text(min_size=1, max_size=MAX_ID_CHARS)
labels = st.text(max_size=MAX_LABEL_CHARS)
valid_events = st.builds(
    PlayEvent,
    event_id=ids,
    user_id=ids,
    item_id=ids,
    ts=st.integers(TS_MIN_MS, TS_MAX_MS),
    action=labels,
    genres=st.lists(labels, max_size=MAX_GENRES).map(tuple),
    kind=st.sampled_from(KINDS),
    release_ts=st.none() | st.integers(RELEASE_TS_MIN_MS, TS_MAX_MS),
    duration_s=st.floats(0.0, MAX_DURATION_S),
    device=st.none() | labels,
)


@FUZZ
@given(event=valid_events, fmt=st.sampled_from(FORMATS))
def test_any_valid_event_round_trips_and_matches_the_schema(event: PlayEvent, fmt: str) -> None:
    data = encode_play_event(event, fmt)
    assert decode_play_event(data, fmt) == event
    assert VALIDATORS["play_event"].is_valid(wire_to_dict(data, fmt))


@FUZZ
@given(data=st.binary(max_size=300), fmt=st.sampled_from(FORMATS))
def test_random_bytes_raise_only_contract_errors(data: bytes, fmt: str) -> None:
    decode_or_contract_error(data, fmt)
    with contextlib.suppress(ContractError):
        decode_intent_update(data, fmt)
    with contextlib.suppress(ContractError):
        decode_dead_letter(data)


@st.composite
def corrupted_encodings(draw: st.DrawFn) -> tuple[bytes, str]:
    """A valid event's bytes with a few bytes overwritten, and sometimes cut short."""
    fmt = draw(st.sampled_from(FORMATS))
    data = bytearray(encode_play_event(draw(valid_events), fmt))
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data) - 1)):]
    return bytes(data), fmt


@FUZZ
@given(corrupted=corrupted_encodings())
def test_corrupted_encodings_raise_only_contract_errors(corrupted: tuple[bytes, str]) -> None:
    data, fmt = corrupted
    event = decode_or_contract_error(data, fmt)
    if event is not None:  # a corruption can still leave a valid event
        assert VALIDATORS["play_event"].is_valid(orjson.loads(encode_play_event(event, "json")))


# Values a JSON producer can write, with the contract's boundaries over-represented.
boundary_numbers = st.sampled_from(
    [0, -1, TS_MAX_MS, TS_MAX_MS + 1, RELEASE_TS_MIN_MS, RELEASE_TS_MIN_MS - 1, MAX_DURATION_S,
     MAX_DURATION_S + 1e-6, 1.0, 2.5, -0.0, 1e300, 2**63 - 1, -(2**63), 2**64 - 1]
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | boundary_numbers
    | st.text(max_size=MAX_ID_CHARS + 2)
    | st.sampled_from(KINDS)
)


def containers(children: st.SearchStrategy) -> st.SearchStrategy:
    lists = st.lists(children, max_size=MAX_GENRES + 2)
    return lists | st.dictionaries(st.text(max_size=8), children, max_size=4)


json_values = st.recursive(json_scalars, containers, max_leaves=20)

# msgpack can also carry binary, non-finite floats and extension types.
msgpack_values = st.recursive(
    json_scalars
    | st.binary(max_size=20)
    | st.sampled_from([math.nan, math.inf, -math.inf])
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
    containers,
    max_leaves=20,
)

FIELD_NAMES = list(event_map())
OVERSIZED = {
    "event_id": "e" * (MAX_ID_CHARS + 1),
    "user_id": "u" * (MAX_ID_CHARS + 1),
    "item_id": "i" * (MAX_ID_CHARS + 1),
    "action": "a" * (MAX_LABEL_CHARS + 1),
    "device": "d" * (MAX_LABEL_CHARS + 1),
    "genres": ["g"] * (MAX_GENRES + 1),
    "note": "n" * MAX_MESSAGE_BYTES,  # an unknown field that makes the message too large
}


@st.composite
def mutated_event_maps(draw: st.DrawFn, values: st.SearchStrategy) -> dict:
    """A valid event's map with one to three fields deleted, replaced by values of any type,
    oversized, or added."""
    fields = orjson.loads(encode_play_event(draw(valid_events), "json"))
    for _ in range(draw(st.integers(1, 3))):
        mutation = draw(st.sampled_from(["delete", "replace", "oversize", "add"]))
        if mutation == "delete":
            fields.pop(draw(st.sampled_from(FIELD_NAMES)), None)
        elif mutation == "replace":
            fields[draw(st.sampled_from(FIELD_NAMES))] = draw(values)
        elif mutation == "oversize":
            name = draw(st.sampled_from(sorted(OVERSIZED)))
            fields[name] = OVERSIZED[name]
        else:
            fields[draw(st.text(max_size=12))] = draw(values)
    return fields


@FUZZ
@given(fields=mutated_event_maps(json_values))
def test_mutated_events_decode_exactly_when_the_schema_accepts_them(fields: dict) -> None:
    schema_accepts = VALIDATORS["play_event"].is_valid(fields)
    for fmt in FORMATS:
        data = encode_map(fields, fmt)
        event = decode_or_contract_error(data, fmt)
        if len(data) > MAX_MESSAGE_BYTES:
            assert event is None  # the one limit a JSON Schema cannot express
        else:
            assert (event is not None) == schema_accepts, (fmt, fields)


@FUZZ
@given(fields=mutated_event_maps(msgpack_values))
def test_mutated_msgpack_events_raise_only_contract_errors(fields: dict) -> None:
    event = decode_or_contract_error(msgpack.packb(fields), "msgpack")
    if event is not None:  # what decodes is a valid event
        assert VALIDATORS["play_event"].is_valid(orjson.loads(encode_play_event(event, "json")))


def checked_or_contract_error(fields: dict) -> PlayEvent | None:
    try:
        return _checked_play_event(fields)
    except ContractError:
        return None


@FUZZ
@given(fields=mutated_event_maps(msgpack_values) | valid_events.map(lambda e: orjson.loads(encode_play_event(e, "json"))))
def test_the_plain_fast_path_accepts_only_what_the_field_checks_accept_and_decodes_alike(fields: dict) -> None:
    plain = _plain_play_event(fields)
    if plain is not None:
        assert plain == checked_or_contract_error(fields)
        assert [type(getattr(plain, name)) for name in ("ts", "duration_s", "genres")] == [int, float, tuple]


@given(event=valid_events, fmt=st.sampled_from(FORMATS))
def test_valid_events_from_our_encoder_take_the_fast_path(event: PlayEvent, fmt: str) -> None:
    parsed = wire_to_dict(encode_play_event(event, fmt), fmt)
    assert _plain_play_event(parsed) == event


def test_a_dead_letter_of_a_huge_message_keeps_its_start_size_and_digest_and_fits_in_kafka() -> None:
    huge, key = b"\x81" + bytes(range(256)) * 4000, b"k" * 10_000  # 1 MB and 10 KB
    letter = DeadLetter(TOO_LARGE, "too big", "plays", 0, 9, key, huge, 1)
    data = encode_dead_letter(letter)
    assert len(data) < 200_000  # whatever came in, far below Kafka's 1 MB message limit
    VALIDATORS["dead_letter"].validate(orjson.loads(data))
    decoded = decode_dead_letter(data)
    assert decoded == letter and decoded.truncated
    assert decoded.value == huge[:MAX_DEAD_LETTER_VALUE_BYTES] and decoded.value_size == len(huge)
    assert decoded.value_sha256 == hashlib.sha256(huge).hexdigest()
    assert decoded.key == key[:MAX_DEAD_LETTER_KEY_BYTES] and decoded.key_size == len(key)
    small = DeadLetter(TOO_LARGE, "fits", "plays", 0, 9, None, b"abc", 1)
    assert not small.truncated and small.key_size is None and small.value == b"abc"
