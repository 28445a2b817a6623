"""Play-event log files: write them, and read them back as a stream in constant memory.

A log is a file of PlayEvents in one of two record formats, chosen by the file's suffix:

- JSON Lines (`.jsonl`): one JSON PlayEvent per line;
- msgpack (`.msgpack`): a plain concatenation of msgpack maps, one per PlayEvent.

Either may be gzip-compressed (`.jsonl.gz`, `.msgpack.gz`). Writing compresses when the name ends
in `.gz`; reading looks at the file's first bytes instead, so a compressed file without `.gz` in
its name still reads. Each record is encoded and validated by `schemas.codec`, the one place that
knows the wire contract, so a log holds exactly what the `plays` topic would carry.

Reading never holds more than one record (at most MAX_MESSAGE_BYTES) and a read buffer in memory.
A record that breaks the contract stops the read with a LogError naming the file and the record's
line (JSONL) or number (msgpack): training on a corrupt file must fail loudly, not skip data.
"""
from __future__ import annotations

import gzip
import os
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import msgpack

from schemas.codec import ContractError, decode_play_event, encode_play_event
from schemas.contracts import MAX_MESSAGE_BYTES, PlayEvent

# Suffix -> record format; the longest matching suffix wins (".jsonl.gz" before ".gz").
LOG_SUFFIXES = {
    ".jsonl": "json",
    ".jsonl.gz": "json",
    ".msgpack": "msgpack",
    ".msgpack.gz": "msgpack",
}
GZIP_MAGIC = b"\x1f\x8b"
READ_CHUNK_BYTES = 64 * 1024


class LogError(Exception):
    """A log file cannot be written or read: unknown format, missing, empty or corrupt."""


def log_format(path: str | os.PathLike) -> str:
    """The record format ("json" or "msgpack") that the file name's suffix selects."""
    name = Path(path).name.lower()
    for suffix in sorted(LOG_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return LOG_SUFFIXES[suffix]
    accepted = ", ".join(LOG_SUFFIXES)
    raise LogError(f"{path}: unknown log format; the file name must end in one of: {accepted}")


def write_log(path: str | os.PathLike, events: Iterable[PlayEvent]) -> int:
    """Write `events` to `path` in the format its suffix selects; return how many were written.

    Events are encoded one at a time, so `events` may be a generator of any length. The file
    appears under its name only once complete: a failure part-way leaves no half-written log.
    """
    path = Path(path)
    fmt = log_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    count = 0
    try:
        with open(partial, "wb") as raw:
            # mtime=0 and no file name in the header: the same events always give the same bytes.
            out: BinaryIO = (
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0)
                if path.name.lower().endswith(".gz")
                else raw
            )
            with out:
                for event in events:
                    record = encode_play_event(event, fmt)
                    out.write(record + b"\n" if fmt == "json" else record)
                    count += 1
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return count


def read_log(path: str | os.PathLike) -> Iterator[PlayEvent]:
    """Stream the PlayEvents of a log file, in file order, in constant memory.

    The file name and the file itself are checked now (unknown suffix, missing, not a file,
    unreadable); records are read and validated as the iterator is consumed. A corrupt record or
    a file with no events raises LogError from the iterator.
    """
    path = Path(path)
    fmt = log_format(path)
    try:
        with open(path, "rb") as probe:
            probe.read(len(GZIP_MAGIC))
    except FileNotFoundError:
        raise LogError(f"{path}: no such log file") from None
    except IsADirectoryError:
        raise LogError(f"{path}: is a directory, not a log file") from None
    except OSError as exc:
        raise LogError(f"{path}: cannot read log file: {exc.strerror or exc}") from None
    records = _read_json_lines if fmt == "json" else _read_msgpack_records
    return _events_of(path, records)


def read_user_sequences(
    path: str | os.PathLike, until_ts: int | None = None
) -> dict[str, list[PlayEvent]]:
    """All events of a log grouped by user, each user's sorted by (ts, event_id).

    With `until_ts`, only events strictly before that time (epoch ms) are kept, so a model can be
    trained on the past and tested on what came after. Raises LogError when nothing is left.
    """
    sequences: dict[str, list[PlayEvent]] = defaultdict(list)
    for event in read_log(path):
        if until_ts is None or event.ts < until_ts:
            sequences[event.user_id].append(event)
    if not sequences:
        raise LogError(f"{path}: contains no events before ts={until_ts}")
    for events in sequences.values():
        events.sort(key=lambda event: (event.ts, event.event_id))
    return dict(sequences)


def _events_of(path: Path, records) -> Iterator[PlayEvent]:
    """Open the log (gunzipping when its first bytes say gzip) and yield its validated events."""
    count = 0
    with open(path, "rb") as raw:
        compressed = raw.read(len(GZIP_MAGIC)) == GZIP_MAGIC
        raw.seek(0)
        stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        try:
            for event in records(path, stream):
                count += 1
                yield event
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise LogError(f"{path}: corrupt gzip data after {count} events: {exc}") from None
        except OSError as exc:
            raise LogError(f"{path}: read failed after {count} events: {exc}") from None
    if count == 0:
        raise LogError(f"{path}: contains no events")


def _read_json_lines(path: Path, stream: BinaryIO) -> Iterator[PlayEvent]:
    line_number = 0
    while True:
        # A line longer than any valid message is cut here and rejected by the codec as too
        # large, so a file without newlines cannot make the reader load it whole.
        line = stream.readline(MAX_MESSAGE_BYTES + 2)
        if not line:
            return
        line_number += 1
        if not line.strip():
            continue
        try:
            yield decode_play_event(line.rstrip(b"\r\n"), "json")
        except ContractError as exc:
            raise LogError(f"{path}: line {line_number}: {exc}") from None


def _read_msgpack_records(path: Path, stream: BinaryIO) -> Iterator[PlayEvent]:
    """Split the stream into one msgpack object per record and decode each record's own bytes.

    The Unpacker only finds where each object ends (`skip` + `tell`); the codec then decodes
    and validates exactly those bytes, the same call a Kafka consumer makes for one message.
    """
    unpacker = msgpack.Unpacker(max_buffer_size=MAX_MESSAGE_BYTES + 2 * READ_CHUNK_BYTES)
    pending = bytearray()  # bytes read but not yet decoded; they start at stream offset `start`
    start = 0
    record_number = 0
    while chunk := stream.read(READ_CHUNK_BYTES):
        unpacker.feed(chunk)
        pending += chunk
        while True:
            try:
                unpacker.skip()
            except msgpack.OutOfData:
                break
            except ValueError as exc:  # msgpack.FormatError, StackError
                raise LogError(
                    f"{path}: record {record_number + 1} (byte {start}): not msgpack: {exc}"
                ) from None
            end = unpacker.tell()
            record_number += 1
            record = bytes(pending[: end - start])
            del pending[: end - start]
            try:
                yield decode_play_event(record, "msgpack")
            except ContractError as exc:
                raise LogError(f"{path}: record {record_number} (byte {start}): {exc}") from None
            start = end
        if len(pending) > MAX_MESSAGE_BYTES:
            raise LogError(
                f"{path}: record {record_number + 1} (byte {start}): larger than the "
                f"{MAX_MESSAGE_BYTES}-byte message limit"
            )
    if pending:
        raise LogError(
            f"{path}: record {record_number + 1} (byte {start}): truncated, the file ends inside it"
        )
