"""Play-event logs and catalogues: write them, and read them back as a stream in constant memory.

A log is a file of PlayEvents; a catalogue is a file of CatalogueEntries, one per title a shop
offers, played or not. Both come in one of two record formats, chosen by the file's suffix:

- JSON Lines (`.jsonl`): one JSON record per line;
- msgpack (`.msgpack`): a plain concatenation of msgpack maps, one per record.

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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgpack

from schemas.codec import (
    ContractError,
    decode_catalogue_entry,
    decode_play_event,
    encode_catalogue_entry,
    encode_play_event,
)
from schemas.contracts import MAX_MESSAGE_BYTES, CatalogueEntry, PlayEvent

# Suffix -> record format, of logs and catalogues alike; the longest matching suffix wins (".jsonl.gz" before ".gz").
LOG_SUFFIXES = {
    ".jsonl": "json",
    ".jsonl.gz": "json",
    ".msgpack": "msgpack",
    ".msgpack.gz": "msgpack",
}
GZIP_MAGIC = b"\x1f\x8b"
READ_CHUNK_BYTES = 64 * 1024


class LogError(Exception):
    """A log or catalogue file cannot be written or read: unknown format, missing, empty or corrupt."""


@dataclass(frozen=True)
class _Contents:
    """What a kind of file holds, and the words its errors use."""

    file: str  # "log"
    records: str  # "events"
    encode: Callable[[object, str], bytes]
    decode: Callable[[bytes, str], object]


_LOG = _Contents("log", "events", encode_play_event, decode_play_event)
_CATALOGUE = _Contents("catalogue", "titles", encode_catalogue_entry, decode_catalogue_entry)


def log_format(path: str | os.PathLike) -> str:
    """The record format ("json" or "msgpack") that the file name's suffix selects."""
    return _record_format(path, _LOG)


def catalogue_format(path: str | os.PathLike) -> str:
    """The record format of a catalogue file: its suffix selects it as a log's does."""
    return _record_format(path, _CATALOGUE)


def catalogue_beside(log_path: str | os.PathLike) -> Path:
    """Where a catalogue goes beside a log by default: `world.msgpack.gz` -> `world.catalogue.msgpack.gz`
    (the same directory, format and compression)."""
    log_path = Path(log_path)
    log_format(log_path)
    name = log_path.name
    stem_length = len(name) - len(_suffix(name))
    return log_path.with_name(name[:stem_length] + ".catalogue" + name[stem_length:])


def _suffix(name: str) -> str | None:
    """The longest of LOG_SUFFIXES that the file name ends with (".jsonl.gz" before ".gz"), if any."""
    lowered = name.lower()
    return max((suffix for suffix in LOG_SUFFIXES if lowered.endswith(suffix)), key=len, default=None)


def _record_format(path: str | os.PathLike, contents: _Contents) -> str:
    suffix = _suffix(Path(path).name)
    if suffix is None:
        accepted = ", ".join(LOG_SUFFIXES)
        raise LogError(f"{path}: unknown {contents.file} format; the file name must end in one of: {accepted}")
    return LOG_SUFFIXES[suffix]


def write_log(path: str | os.PathLike, events: Iterable[PlayEvent]) -> int:
    """Write `events` to `path` in the format its suffix selects; return how many were written.

    Events are encoded one at a time, so `events` may be a generator of any length. The file
    appears under its name only once complete: a failure part-way leaves no half-written log.
    """
    return _write_records(path, events, _LOG)


def write_catalogue(path: str | os.PathLike, entries: Iterable[CatalogueEntry]) -> int:
    """Write a catalogue as `write_log` writes a log; return how many titles were written."""
    return _write_records(path, entries, _CATALOGUE)


def _write_records(path: str | os.PathLike, records: Iterable, contents: _Contents) -> int:
    path = Path(path)
    fmt = _record_format(path, contents)
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
                for record in records:
                    encoded = contents.encode(record, fmt)
                    out.write(encoded + b"\n" if fmt == "json" else encoded)
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
    return _read_records(path, _LOG)


def read_catalogue(path: str | os.PathLike) -> Iterator[CatalogueEntry]:
    """Stream the CatalogueEntries of a catalogue file, in file order, in constant memory, checked
    as `read_log` checks a log (a file with no titles raises LogError). Nothing here checks that
    an item_id appears once: that would need memory for every id."""
    return _read_records(path, _CATALOGUE)


def _read_records(path: str | os.PathLike, contents: _Contents) -> Iterator:
    path = Path(path)
    fmt = _record_format(path, contents)
    try:
        with open(path, "rb") as probe:
            probe.read(len(GZIP_MAGIC))
    except FileNotFoundError:
        raise LogError(f"{path}: no such {contents.file} file") from None
    except IsADirectoryError:
        raise LogError(f"{path}: is a directory, not a {contents.file} file") from None
    except OSError as exc:
        raise LogError(f"{path}: cannot read {contents.file} file: {exc.strerror or exc}") from None
    records = _read_json_lines if fmt == "json" else _read_msgpack_records
    return _records_of(path, records, contents)


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


def _records_of(path: Path, records, contents: _Contents) -> Iterator:
    """Open the file (gunzipping when its first bytes say gzip) and yield its validated records."""
    count = 0
    with open(path, "rb") as raw:
        compressed = raw.read(len(GZIP_MAGIC)) == GZIP_MAGIC
        raw.seek(0)
        stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        try:
            for record in records(path, stream, contents.decode):
                count += 1
                yield record
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise LogError(f"{path}: corrupt gzip data after {count} {contents.records}: {exc}") from None
        except OSError as exc:
            raise LogError(f"{path}: read failed after {count} {contents.records}: {exc}") from None
    if count == 0:
        raise LogError(f"{path}: contains no {contents.records}")


def _read_json_lines(path: Path, stream: BinaryIO, decode) -> Iterator:
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
            yield decode(line.rstrip(b"\r\n"), "json")
        except ContractError as exc:
            raise LogError(f"{path}: line {line_number}: {exc}") from None


def _read_msgpack_records(path: Path, stream: BinaryIO, decode) -> Iterator:
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
                yield decode(record, "msgpack")
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
