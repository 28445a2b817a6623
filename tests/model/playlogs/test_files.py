import gzip
import tracemalloc
from pathlib import Path

import msgpack
import orjson
import pytest

from model.playlogs.files import (
    LOG_SUFFIXES,
    LogError,
    catalogue_beside,
    catalogue_format,
    log_format,
    read_catalogue,
    read_log,
    read_user_sequences,
    write_catalogue,
    write_log,
)
from schemas.codec import encode_catalogue_entry, encode_play_event
from schemas.contracts import MAX_GENRES, MAX_MESSAGE_BYTES, CatalogueEntry, PlayEvent

SUFFIXES = list(LOG_SUFFIXES)


def play(n: int, user: str = "u1", ts: int | None = None, **changes) -> PlayEvent:
    fields = dict(
        event_id=f"{user}-{n}",
        user_id=user,
        item_id=f"show-{n % 7}",
        ts=1_700_000_000_000 + n * 60_000 if ts is None else ts,
        action=("discover", "continue", "rewatch", "trailer")[n % 4],
        genres=("Drama", "Crime")[: n % 3],
        kind="show" if n % 2 else "movie",
        release_ts=None if n % 5 == 0 else -315_619_200_000 + n,  # 1960, before the epoch
        duration_s=(n % 100) * 12.5,
        device=None if n % 3 == 0 else "tv",
    )
    fields.update(changes)
    return PlayEvent(**fields)


EVENTS = [play(n) for n in range(40)] + [play(40, item_id="Amélie 🎬", genres=("Comédie",))]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip(tmp_path, suffix):
    path = tmp_path / f"plays{suffix}"
    assert write_log(path, iter(EVENTS)) == len(EVENTS)
    assert list(read_log(path)) == EVENTS
    compressed = path.read_bytes()[:2] == b"\x1f\x8b"
    assert compressed == suffix.endswith(".gz")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_same_events_give_the_same_bytes(tmp_path, suffix):
    write_log(tmp_path / f"a{suffix}", EVENTS)
    write_log(tmp_path / f"b{suffix}", EVENTS)
    assert (tmp_path / f"a{suffix}").read_bytes() == (tmp_path / f"b{suffix}").read_bytes()


def test_records_are_the_codec_encoding(tmp_path):
    write_log(tmp_path / "plays.jsonl", EVENTS[:2])
    write_log(tmp_path / "plays.msgpack", EVENTS[:2])
    lines = (tmp_path / "plays.jsonl").read_bytes().split(b"\n")
    assert lines == [encode_play_event(EVENTS[0], "json"), encode_play_event(EVENTS[1], "json"), b""]
    assert (tmp_path / "plays.msgpack").read_bytes() == b"".join(
        encode_play_event(event, "msgpack") for event in EVENTS[:2]
    )


@pytest.mark.parametrize("fmt", ["jsonl", "msgpack"])
def test_compression_is_detected_from_the_bytes_not_the_name(tmp_path, fmt):
    compressed = tmp_path / f"plays.{fmt}.gz"
    write_log(compressed, EVENTS)
    misnamed = tmp_path / f"plays.{fmt}"
    compressed.rename(misnamed)
    assert list(read_log(misnamed)) == EVENTS

    plain = tmp_path / f"plain.{fmt}"
    write_log(plain, EVENTS)
    plain_named_gz = tmp_path / f"plain.{fmt}.gz"
    plain.rename(plain_named_gz)
    assert list(read_log(plain_named_gz)) == EVENTS


def test_log_format_by_suffix(tmp_path):
    assert log_format("a/b/plays.jsonl") == "json"
    assert log_format("PLAYS.JSONL.GZ") == "json"
    assert log_format(tmp_path / "x.msgpack") == "msgpack"
    assert log_format("x.msgpack.gz") == "msgpack"


@pytest.mark.parametrize("name", ["plays.csv", "plays.json", "plays.gz", "plays"])
def test_unknown_suffix_is_refused_naming_the_accepted_ones(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(LogError) as error:
        write_log(path, EVENTS)
    assert name in str(error.value) and ".jsonl.gz" in str(error.value) and ".msgpack" in str(error.value)
    path.write_bytes(b"")
    with pytest.raises(LogError, match="unknown log format"):
        read_log(path)


def test_write_creates_parent_directories(tmp_path):
    path = tmp_path / "new" / "dir" / "plays.msgpack"
    write_log(path, EVENTS[:1])
    assert list(read_log(path)) == EVENTS[:1]


def test_a_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "plays.jsonl"

    def events_then_failure():
        yield EVENTS[0]
        raise RuntimeError("generator broke")

    with pytest.raises(RuntimeError):
        write_log(path, events_then_failure())
    assert list(tmp_path.iterdir()) == []


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(LogError, match="no such log file") as error:
        read_log(tmp_path / "absent.jsonl")
    assert "absent.jsonl" in str(error.value)
    (tmp_path / "dir.msgpack").mkdir()
    with pytest.raises(LogError, match="is a directory"):
        read_log(tmp_path / "dir.msgpack")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_empty_log_says_it_contains_no_events(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    assert write_log(path, []) == 0
    with pytest.raises(LogError, match="contains no events") as error:
        list(read_log(path))
    assert str(path) in str(error.value)


def test_blank_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "plays.jsonl"
    first, second = (encode_play_event(event, "json") for event in EVENTS[:2])
    path.write_bytes(b"\n" + first + b"\r\n\n  \n" + second)  # no final newline either
    assert list(read_log(path)) == EVENTS[:2]
    path.write_bytes(b"\n\n \n")
    with pytest.raises(LogError, match="contains no events"):
        list(read_log(path))


def test_corrupt_json_line_is_reported_by_line_number_after_earlier_events(tmp_path):
    path = tmp_path / "plays.jsonl"
    good = [encode_play_event(event, "json") for event in EVENTS[:2]]
    path.write_bytes(good[0] + b"\n\n" + good[1] + b"\n{not json\n" + good[0] + b"\n")
    events = read_log(path)
    assert next(events) == EVENTS[0]  # streaming: events before the bad line arrive first
    assert next(events) == EVENTS[1]
    with pytest.raises(LogError) as error:
        next(events)
    message = str(error.value)
    assert str(path) in message and "line 4" in message and "not_decodable" in message


def test_contract_violation_names_line_field_and_code(tmp_path):
    path = tmp_path / "plays.jsonl.gz"
    record = orjson.loads(encode_play_event(EVENTS[1], "json"))
    record["kind"] = "podcast"
    with gzip.open(path, "wb") as file:
        file.write(encode_play_event(EVENTS[0], "json") + b"\n" + orjson.dumps(record) + b"\n")
    with pytest.raises(LogError) as error:
        list(read_log(path))
    message = str(error.value)
    assert "line 2" in message and "'kind'" in message and "unknown_enum" in message


def test_overlong_line_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "plays.jsonl"
    path.write_bytes(b"x" * (3 * MAX_MESSAGE_BYTES))
    with pytest.raises(LogError, match="line 1.*too_large"):
        list(read_log(path))


def test_corrupt_msgpack_record_is_reported_by_number(tmp_path):
    path = tmp_path / "plays.msgpack"
    bad = msgpack.packb({**orjson.loads(encode_play_event(EVENTS[0], "json")), "ts": "yesterday"})
    path.write_bytes(encode_play_event(EVENTS[0], "msgpack") + bad)
    events = read_log(path)
    assert next(events) == EVENTS[0]
    with pytest.raises(LogError) as error:
        next(events)
    message = str(error.value)
    assert "record 2" in message and "'ts'" in message and "wrong_type" in message


def test_msgpack_that_is_not_a_map_or_not_msgpack(tmp_path):
    path = tmp_path / "plays.msgpack"
    path.write_bytes(encode_play_event(EVENTS[0], "msgpack") + msgpack.packb([1, 2]))
    with pytest.raises(LogError, match="record 2.*not_an_object"):
        list(read_log(path))
    path.write_bytes(encode_play_event(EVENTS[0], "msgpack") + b"\xc1garbage")
    with pytest.raises(LogError, match="record 2.*not msgpack"):
        list(read_log(path))


def test_truncated_msgpack_record(tmp_path):
    path = tmp_path / "plays.msgpack"
    whole = b"".join(encode_play_event(event, "msgpack") for event in EVENTS[:3])
    path.write_bytes(whole[:-5])
    with pytest.raises(LogError, match="record 3.*truncated"):
        list(read_log(path))


def test_oversized_msgpack_record_is_refused(tmp_path):
    path = tmp_path / "plays.msgpack"
    path.write_bytes(msgpack.packb({"event_id": "e" * (2 * MAX_MESSAGE_BYTES)}))
    with pytest.raises(LogError, match="record 1.*(too_large|message limit)"):
        list(read_log(path))


def test_truncated_gzip_is_a_log_error(tmp_path):
    path = tmp_path / "plays.msgpack.gz"
    write_log(path, EVENTS)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(LogError, match="plays.msgpack.gz"):
        list(read_log(path))


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".msgpack"])
def test_reading_streams_in_constant_memory(tmp_path, suffix):
    path = tmp_path / f"big{suffix}"
    count = 10_000
    write_log(path, (play(n, user=f"u{n % 50}") for n in range(count)))

    tracemalloc.start()
    try:
        seen = sum(1 for _ in read_log(path))
        _, streaming_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        held = list(read_log(path))
        _, holding_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == len(held) == count
    assert streaming_peak < 1_000_000  # a read buffer and one record, whatever the file's length
    assert streaming_peak * 10 < holding_peak


def test_read_user_sequences_groups_sorts_and_cuts_at_until(tmp_path):
    events = [
        play(1, user="b", ts=300),
        play(2, user="a", ts=200),
        play(3, user="a", ts=100),
        play(4, user="b", ts=300, event_id="b-0"),  # same ts: event_id decides
        play(5, user="a", ts=400),
    ]
    path = tmp_path / "plays.msgpack.gz"
    write_log(path, events)
    sequences = read_user_sequences(path)
    assert {user: [e.event_id for e in seq] for user, seq in sequences.items()} == {
        "a": ["a-3", "a-2", "a-5"],
        "b": ["b-0", "b-1"],
    }
    before_300 = read_user_sequences(path, until_ts=300)
    assert {user: [e.ts for e in seq] for user, seq in before_300.items()} == {"a": [100, 200]}
    with pytest.raises(LogError, match="no events before ts=100"):
        read_user_sequences(path, until_ts=100)


# ---------------------------------------------------------------------------------------------
# Catalogues: the same files, with one CatalogueEntry a record
# ---------------------------------------------------------------------------------------------

def entry(n: int, **changes) -> CatalogueEntry:
    fields = dict(
        item_id=f"show-{n}" if n % 2 else f"movie-{n}",
        kind="show" if n % 2 else "movie",
        genres=("Drama", "Crime", "Comedy")[: n % 4],
        release_ts=None if n % 5 == 0 else -315_619_200_000 + n * 86_400_000,
    )
    fields.update(changes)
    return CatalogueEntry(**fields)


ENTRIES = [entry(n) for n in range(30)] + [entry(30, item_id="Amélie 🎬", genres=("Comédie",))]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_catalogue_round_trip(tmp_path, suffix):
    path = tmp_path / f"titles{suffix}"
    assert write_catalogue(path, iter(ENTRIES)) == len(ENTRIES)
    assert list(read_catalogue(path)) == ENTRIES
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == suffix.endswith(".gz")
    assert catalogue_format(path) == log_format(path)


def test_catalogue_records_are_the_codec_encoding(tmp_path):
    write_catalogue(tmp_path / "titles.jsonl", ENTRIES[:2])
    lines = (tmp_path / "titles.jsonl").read_bytes().split(b"\n")
    assert lines == [encode_catalogue_entry(ENTRIES[0], "json"), encode_catalogue_entry(ENTRIES[1], "json"), b""]


@pytest.mark.parametrize(
    "log, catalogue",
    [
        ("world.jsonl", "world.catalogue.jsonl"),
        ("out/world.msgpack.gz", "out/world.catalogue.msgpack.gz"),
        ("World.JSONL.GZ", "World.catalogue.JSONL.GZ"),
        ("a.b.msgpack", "a.b.catalogue.msgpack"),
    ],
)
def test_the_default_catalogue_sits_beside_the_log_in_its_format(log, catalogue):
    assert catalogue_beside(Path(log)) == Path(catalogue)
    assert catalogue_format(catalogue) == log_format(log)


def test_catalogue_errors_name_the_file_and_say_catalogue(tmp_path):
    with pytest.raises(LogError, match="unknown log format"):
        catalogue_beside("world.csv")
    with pytest.raises(LogError, match="unknown catalogue format"):
        write_catalogue(tmp_path / "titles.csv", ENTRIES)
    with pytest.raises(LogError, match="no such catalogue file"):
        read_catalogue(tmp_path / "absent.jsonl")
    write_catalogue(tmp_path / "empty.msgpack.gz", [])
    with pytest.raises(LogError, match="empty.msgpack.gz: contains no titles"):
        list(read_catalogue(tmp_path / "empty.msgpack.gz"))


def test_an_invalid_catalogue_record_stops_the_read_at_its_line(tmp_path):
    path = tmp_path / "titles.jsonl.gz"
    too_many_genres = orjson.dumps({**orjson.loads(encode_catalogue_entry(ENTRIES[1], "json")),
                                    "genres": ["Drama"] * (MAX_GENRES + 1)})
    with gzip.open(path, "wb") as file:
        file.write(b"\n".join([encode_catalogue_entry(ENTRIES[0], "json"), b"", too_many_genres, b""]))
    entries = read_catalogue(path)
    assert next(entries) == ENTRIES[0]  # streaming: records before the bad line arrive first
    with pytest.raises(LogError) as error:
        next(entries)
    assert "line 3" in str(error.value) and "'genres'" in str(error.value) and "too_long" in str(error.value)


def test_an_invalid_msgpack_catalogue_record_is_reported_by_number(tmp_path):
    path = tmp_path / "titles.msgpack"
    path.write_bytes(encode_catalogue_entry(ENTRIES[0], "msgpack") + msgpack.packb({"item_id": "x", "kind": "movie"}))
    with pytest.raises(LogError, match="record 2.*'genres'.*missing_field"):
        list(read_catalogue(path))


def test_reading_a_catalogue_streams_in_constant_memory(tmp_path):
    path = tmp_path / "titles.jsonl.gz"
    count = 20_000
    write_catalogue(path, (entry(n) for n in range(count)))
    tracemalloc.start()
    try:
        seen = sum(1 for _ in read_catalogue(path))
        _, streaming_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == count
    assert streaming_peak < 1_000_000  # a read buffer and one record, whatever the file's length
