"""The catalogue file's record: codec round trips, error codes, and agreement with its JSON Schema file."""
from __future__ import annotations

import json

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from schemas import (
    FORMATS,
    KINDS,
    MAX_GENRES,
    MAX_ID_CHARS,
    MAX_LABEL_CHARS,
    MAX_MESSAGE_BYTES,
    MISSING_FIELD,
    NOT_AN_OBJECT,
    RELEASE_TS_MIN_MS,
    SCHEMA_FILES,
    TOO_LARGE,
    TOO_LONG,
    TOO_SHORT,
    TS_MAX_MS,
    TS_OUT_OF_RANGE,
    UNKNOWN_ENUM,
    WRONG_TYPE,
    CatalogueEntry,
    ContractError,
    decode_catalogue_entry,
    encode_catalogue_entry,
)

SCHEMA = json.loads(SCHEMA_FILES["catalogue_entry"].read_text())
VALIDATOR = Draft202012Validator(SCHEMA)

VALID_ENTRY = CatalogueEntry(item_id="show-7", kind="show", genres=("Drama", "Crime"), release_ts=1_600_000_000_000)
ROUND_TRIP_ENTRIES = [
    VALID_ENTRY,
    CatalogueEntry("m", "movie", (), None),  # smallest values, release date unknown
    CatalogueEntry(
        item_id="é" * MAX_ID_CHARS,  # limits count characters, not bytes
        kind="movie",
        genres=tuple("g" * MAX_LABEL_CHARS for _ in range(MAX_GENRES)),
        release_ts=RELEASE_TS_MIN_MS,
    ),
    CatalogueEntry("i" * MAX_ID_CHARS, "show", ("Kids",), TS_MAX_MS),
]


def entry_map(**changes: object) -> dict:
    fields = {"item_id": "show-7", "kind": "show", "genres": ["Drama", "Crime"], "release_ts": 1_600_000_000_000}
    fields.update(changes)
    return fields


def without(field: str) -> dict:
    fields = entry_map()
    del fields[field]
    return fields


def encode_map(fields: object, fmt: str) -> bytes:
    return orjson.dumps(fields) if fmt == "json" else msgpack.packb(fields)


def wire_to_dict(data: bytes, fmt: str) -> object:
    return orjson.loads(data) if fmt == "json" else msgpack.unpackb(data)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("entry", ROUND_TRIP_ENTRIES)
def test_round_trip_and_the_encoding_matches_the_schema(entry: CatalogueEntry, fmt: str) -> None:
    data = encode_catalogue_entry(entry, fmt)
    assert decode_catalogue_entry(data, fmt) == entry
    VALIDATOR.validate(wire_to_dict(data, fmt))


def test_json_records_write_every_field_in_order() -> None:
    assert encode_catalogue_entry(CatalogueEntry("m", "movie", ("Drama",), None), "json") == (
        b'{"item_id":"m","kind":"movie","genres":["Drama"],"release_ts":null}'
    )


def test_the_schema_file_has_the_contract_limits() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["required"] == ["item_id", "kind", "genres", "release_ts"]
    properties = SCHEMA["properties"]
    assert (properties["item_id"]["minLength"], properties["item_id"]["maxLength"]) == (1, MAX_ID_CHARS)
    assert properties["kind"]["enum"] == list(KINDS)
    assert properties["genres"]["maxItems"] == MAX_GENRES
    assert properties["genres"]["items"]["maxLength"] == MAX_LABEL_CHARS
    release_ts = properties["release_ts"]
    assert (release_ts["minimum"], release_ts["maximum"]) == (RELEASE_TS_MIN_MS, TS_MAX_MS)
    assert str(MAX_MESSAGE_BYTES) in SCHEMA["description"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "code, field, fields",
    [
        (NOT_AN_OBJECT, None, ["show-7", "show"]),
        (MISSING_FIELD, "item_id", without("item_id")),
        (MISSING_FIELD, "kind", without("kind")),
        (MISSING_FIELD, "genres", without("genres")),
        (MISSING_FIELD, "release_ts", without("release_ts")),
        (TOO_SHORT, "item_id", entry_map(item_id="")),
        (TOO_LONG, "item_id", entry_map(item_id="i" * (MAX_ID_CHARS + 1))),
        (WRONG_TYPE, "item_id", entry_map(item_id=7)),
        (UNKNOWN_ENUM, "kind", entry_map(kind="podcast")),
        (WRONG_TYPE, "kind", entry_map(kind=None)),
        (WRONG_TYPE, "genres", entry_map(genres="Drama")),
        (TOO_LONG, "genres", entry_map(genres=["Drama"] * (MAX_GENRES + 1))),
        (TOO_LONG, "genres[1]", entry_map(genres=["Drama", "g" * (MAX_LABEL_CHARS + 1)])),
        (WRONG_TYPE, "genres[0]", entry_map(genres=[3])),
        (TS_OUT_OF_RANGE, "release_ts", entry_map(release_ts=RELEASE_TS_MIN_MS - 1)),
        (TS_OUT_OF_RANGE, "release_ts", entry_map(release_ts=TS_MAX_MS + 1)),
        (WRONG_TYPE, "release_ts", entry_map(release_ts=1.5)),
        (WRONG_TYPE, "release_ts", entry_map(release_ts=True)),
        (WRONG_TYPE, "release_ts", entry_map(release_ts="2024-01-01")),
    ],
)
def test_the_codec_and_the_schema_refuse_the_same_records(code: str, field: str | None, fields: object, fmt: str) -> None:
    with pytest.raises(ContractError) as raised:
        decode_catalogue_entry(encode_map(fields, fmt), fmt)
    assert (raised.value.code, raised.value.field) == (code, field)
    assert not VALIDATOR.is_valid(fields)


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_fields_and_whole_float_times_are_accepted_by_both(fmt: str) -> None:
    fields = entry_map(release_ts=-86_400_000.0, title="Amélie", seasons=3)
    assert VALIDATOR.is_valid(fields)
    decoded = decode_catalogue_entry(encode_map(fields, fmt), fmt)
    assert decoded == CatalogueEntry("show-7", "show", ("Drama", "Crime"), -86_400_000)
    assert type(decoded.release_ts) is int and isinstance(decoded.genres, tuple)


def test_a_record_over_the_message_limit_is_refused_before_parsing() -> None:
    data = orjson.dumps(entry_map(padding="x" * MAX_MESSAGE_BYTES))
    with pytest.raises(ContractError) as raised:
        decode_catalogue_entry(data, "json")
    assert raised.value.code == TOO_LARGE


entries = st.builds(
    CatalogueEntry,
    item_id=st.text(min_size=1, max_size=MAX_ID_CHARS),
    kind=st.sampled_from(KINDS),
    genres=st.lists(st.text(max_size=MAX_LABEL_CHARS), max_size=MAX_GENRES).map(tuple),
    release_ts=st.none() | st.integers(RELEASE_TS_MIN_MS, TS_MAX_MS),
)


@settings(max_examples=200, deadline=None)
@given(entry=entries, fmt=st.sampled_from(FORMATS))
def test_any_valid_entry_round_trips_and_matches_the_schema(entry: CatalogueEntry, fmt: str) -> None:
    data = encode_catalogue_entry(entry, fmt)
    assert decode_catalogue_entry(data, fmt) == entry
    assert VALIDATOR.is_valid(wire_to_dict(data, fmt))
