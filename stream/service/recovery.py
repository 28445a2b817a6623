"""The recovery directory of `intentstream run`: checked with the other options (check_recovery_dir,
a CommandError when it cannot be used), then bound to the model being served (bind_recovery_dir).

Bytewax needs its SQLite partitions created before the first run (`python -m
bytewax.recovery DIR N`). A single process initialises an absent or empty directory itself, with one
partition per worker. A cluster (`--process-id`/`--addresses`) does not, because its processes would
race to create partitions: initialise the directory once before starting the cluster.
A recovery directory belongs to one model: users' histories are snapshotted as feature rows holding
vocabulary indices of the model that wrote them, which another vocabulary would silently misread. So
`run` marks the directory with the model it serves (RECOVERY_MARKER) and refuses to resume it with a
model of another vocabulary or row layout. A retrained model with the same vocabulary may resume it.

Bytewax stores every snapshot as a pickle, and unpickling can run any code the pickle names, so a
tampered partition would run its writer's code on resume. Every snapshot this service takes is
plain data (bytes, numbers, tuples: stream.state.UserSnapshot, the Kafka sources' offsets), whose
pickles import and call nothing; before anything resumes, every stored snapshot is read with
pickletools, without being unpickled, and a directory holding one that would import or call
anything is refused. The partitions are read where they are, by a read-only connection (SQLite
reads the write-ahead log of a killed run with them, and checkpoints nothing).

A full volume: whatever writes to the recovery directory (SQLite's index of a partition's
write-ahead log when the check opens it, initialising it, the model's marker, and Bytewax's
snapshots while the flow runs: stream.service.runner) and finds no space raises RecoveryVolumeFull,
one line naming the directory, and the run exits with EXIT_DISK_FULL. The restart, once there is
space, resumes from the last snapshot: SQLite rolls back the snapshot it could not write.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pickletools
import re
import shutil
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stream.errors import EXIT_DISK_FULL, CommandError
from stream.settings import StreamSettings

if TYPE_CHECKING:
    from model.serving.scorer import Scorer

log = logging.getLogger(__name__)

RECOVERY_MARKER = "intentstream.json"  # in a recovery directory: the model its state belongs to
_PARTITION_FILE = re.compile(r"part-(\d+)\.sqlite3")
# The pickle opcodes that import or call something; plain data is built without any of them.
_CODE_OPCODES = frozenset({
    "GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "BUILD", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4",
    "PERSID", "BINPERSID",
})


class RecoveryVolumeFull(CommandError):
    """The volume of the recovery directory has no space left for what the run must write there."""

    def __init__(self, directory: Path):
        super().__init__(f"no space left for the recovery directory {directory.resolve()} ({_free_bytes(directory):,} "
                         "bytes free on its volume): free space there, or give it a larger volume, and restart; the "
                         "restart resumes from the last snapshot, so nothing is lost", EXIT_DISK_FULL)  # fmt: skip


# With less free than this the recovery volume is full: a run would fail at its first snapshot, so
# it does not start; and an I/O error of SQLite (which does not say which system error it met) there
# is taken for a full volume.
NEARLY_FULL_BYTES = 1 << 20


def is_volume_full(error: BaseException, directory: Path) -> bool:
    """Whether `error`, or an error it was raised from, says that `directory`'s volume is full:
    ENOSPC or EDQUOT from the system, SQLite's "database or disk is full" (Bytewax's own snapshots
    fail with it, as a Rust panic whose text names it), or any other SQLite I/O error while the
    volume has (nearly) no space left."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(error)
        if "DiskFull" in text or "disk is full" in text:
            return True
        if isinstance(error, sqlite3.Error) or "SqliteFailure" in text:
            return _nearly_full(directory)
        error = error.__cause__ or error.__context__
    return False


def _nearly_full(directory: Path) -> bool:
    try:
        return _free_bytes(directory) < NEARLY_FULL_BYTES
    except OSError:
        return False


def _free_bytes(path: Path) -> int:
    """Free bytes on the volume that holds `path`, or would hold it once created."""
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _partition_files(directory: Path) -> dict[int, Path]:
    return {
        int(match.group(1)): path
        for path in directory.iterdir()
        if (match := _PARTITION_FILE.fullmatch(path.name))
    }


def _holds_nothing(directory: Path) -> bool:
    """An existing directory with nothing in it but, perhaps, the marker of a model (no state)."""
    return all(path.name == RECOVERY_MARKER for path in directory.iterdir())


def check_recovery_dir(settings: StreamSettings) -> None:
    directory = settings.recovery_dir
    init_hint = f"`python -m bytewax.recovery {directory} N` (N = total workers of the cluster)"
    if directory.exists() and not directory.is_dir():
        raise CommandError(f"--recovery-dir {directory} is not a directory")
    if not directory.exists() or _holds_nothing(directory):
        if settings.process_id is not None:
            raise CommandError(f"--recovery-dir {directory} holds no recovery partitions; a cluster does not "
                                f"create them itself: run {init_hint} once before starting the cluster")
        nearest = directory
        while not nearest.exists():
            nearest = nearest.parent
        if not os.access(nearest, os.W_OK | os.X_OK):
            raise CommandError(f"--recovery-dir {directory} cannot be created: {nearest} is not writable")
        if _nearly_full(directory):
            raise RecoveryVolumeFull(directory)
        return  # bind_recovery_dir initialises it
    partitions = _partition_files(directory)
    if not partitions:
        raise CommandError(f"--recovery-dir {directory} is not empty but holds no Bytewax recovery partitions "
                            f"(part-N.sqlite3): give an empty directory, or initialise this one with {init_hint}")
    unwritable = [path.name for path in [directory, *partitions.values()] if not os.access(path, os.W_OK)]
    if unwritable:
        raise CommandError(f"--recovery-dir {directory}: not writable: {', '.join(unwritable)}")
    if _nearly_full(directory):
        raise RecoveryVolumeFull(directory)
    if settings.process_id is None:  # a single process must see every partition
        expected = _partition_count(partitions[min(partitions)])
        missing = sorted(set(range(expected)) - partitions.keys())
        if missing:
            raise CommandError(f"--recovery-dir {directory} lacks recovery partition(s) "
                                f"{', '.join(f'part-{i}.sqlite3' for i in missing)} of {expected}: restore them, "
                                f"or delete the directory's part-* files to start from scratch")
    for path in partitions.values():
        _check_snapshots_are_data(path)


def _read_partition(path: Path) -> sqlite3.Connection:
    """A connection that reads a partition where it is and changes nothing. A partition without a
    write-ahead log (closed cleanly) is read as an immutable file, which creates nothing beside it;
    one with a log (a killed run's, whose last snapshots may be there alone, and whose partition
    file a checkpoint may have left half written) read-only, with its log: SQLite then updates, or
    creates, the log's shared-memory index `-shm`, as Bytewax's own connection would."""
    has_log = path.with_name(path.name + "-wal").exists()
    return sqlite3.connect(f"{path.resolve().as_uri()}?{'mode=ro' if has_log else 'immutable=1'}", uri=True)


def _check_snapshots_are_data(path: Path) -> None:
    """Refuse a partition holding a snapshot whose pickle would import or call anything; the rows
    in its write-ahead log count too."""
    try:
        with closing(_read_partition(path)) as db:
            rows = db.execute("SELECT step_id, state_key, ser_change FROM snaps WHERE ser_change IS NOT NULL")
            for step_id, key, pickled in rows:
                what = code_in_pickle(pickled)
                if what:
                    raise CommandError(
                        f"{path}: the snapshot of step {step_id!r}, key {key[:40]!r} is not plain data ({what}): "
                        "this directory was tampered with or written by other software, and resuming it could "
                        "run code; restore it from a trusted copy, or delete its part-* files to start from scratch"
                    )
    except sqlite3.Error as error:
        if is_volume_full(error, path.parent):
            raise RecoveryVolumeFull(path.parent) from None
        raise CommandError(f"{path} is not a readable Bytewax recovery partition: {error}") from None


def code_in_pickle(pickled: bytes) -> str | None:
    """What in a pickle would import or call code (read without unpickling), or None."""
    strings: list[str] = []  # the strings pushed so far: STACK_GLOBAL imports the last two
    try:
        for opcode, argument, _ in pickletools.genops(pickled):
            if isinstance(argument, str):
                strings.append(argument)
            if opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                return f"it imports {strings[-2]}.{strings[-1]}"
            if opcode.name in _CODE_OPCODES:
                return f"{opcode.name} {argument}" if argument is not None else opcode.name
    except Exception as error:  # a malformed pickle: nothing it holds can be trusted
        return f"a malformed pickle: {error}"
    return None


def _partition_count(path: Path) -> int:
    try:
        with closing(_read_partition(path)) as db:
            (count,) = db.execute("SELECT part_count FROM parts").fetchone()
    except (sqlite3.Error, TypeError) as error:
        if is_volume_full(error, path.parent):
            raise RecoveryVolumeFull(path.parent) from None
        raise CommandError(f"{path} is not a Bytewax recovery partition") from None
    return count


def prepare_recovery_dir(settings: StreamSettings) -> None:
    """Create the recovery partitions of an absent or empty directory (one per worker). On a full
    volume, what was created of them is removed again (the next start would take half a partition
    for a damaged one), and RecoveryVolumeFull raised."""
    from bytewax.recovery import init_db_dir

    directory = settings.recovery_dir
    if directory is None or (directory.is_dir() and not _holds_nothing(directory)):
        return
    directory.mkdir(parents=True, exist_ok=True)
    try:
        init_db_dir(directory, settings.workers)
    except BaseException as error:  # Bytewax's Rust panics are BaseExceptions (pyo3's PanicException)
        if not is_volume_full(error, directory):
            raise
        for path in directory.glob("part-*.sqlite3*"):
            path.unlink()
        raise RecoveryVolumeFull(directory) from None
    log.info("initialised recovery directory %s with %d partition(s)", directory, settings.workers)


class RecoveryModelError(ValueError):
    """A recovery directory holding the state of a model this one cannot read; says what to do."""


@dataclass(frozen=True)
class ModelFingerprint:
    """What a recovery directory's per-user state depends on: the rows' layout and the vocabulary
    whose indices they hold. The model's name and version are kept to name it in messages."""

    name: str
    version: str
    vocab_sha256: str
    row_layout: str

    @classmethod
    def of(cls, scorer: "Scorer") -> "ModelFingerprint":
        vocab = json.dumps(scorer.vocab.to_json(), sort_keys=True, separators=(",", ":")).encode()
        return cls(scorer.model_ref.name, scorer.model_ref.version, hashlib.sha256(vocab).hexdigest(),
                   str(scorer.row_dtype.descr))  # fmt: skip

    def reads_state_of(self, other: "ModelFingerprint") -> bool:
        return (self.vocab_sha256, self.row_layout) == (other.vocab_sha256, other.row_layout)

    def describe(self) -> str:
        return f"model {self.name!r} version {self.version} (vocabulary sha256 {self.vocab_sha256[:12]})"

    def to_json(self) -> dict:
        return {"model": {"name": self.name, "version": self.version}, "vocab_sha256": self.vocab_sha256,
                "row_layout": self.row_layout}  # fmt: skip

    @classmethod
    def from_json(cls, raw: dict) -> "ModelFingerprint":
        return cls(raw["model"]["name"], raw["model"]["version"], raw["vocab_sha256"], raw["row_layout"])


def bind_recovery_dir(settings: StreamSettings, model: ModelFingerprint) -> None:
    """Make sure the recovery directory's state can be read by `model`, initialise it if it is new
    (see prepare_recovery_dir), and mark it with `model`. Raises RecoveryModelError, before changing
    anything, when it holds the state of a model with another vocabulary or row layout."""
    directory = settings.recovery_dir
    if directory is None:
        return
    marker = directory / RECOVERY_MARKER
    marked = _read_marker(marker) if marker.exists() else None
    # Without partitions there is no state: a marker left next to none binds nothing.
    has_state = directory.is_dir() and bool(_partition_files(directory))
    if has_state and marked is not None and not model.reads_state_of(marked):
        raise RecoveryModelError(
            f"--recovery-dir {directory} holds the state of {marked.describe()}, which --model "
            f"{settings.model_dir} ({model.describe()}) cannot read: users' histories are stored as "
            f"vocabulary indices of the model that wrote them. Use a fresh --recovery-dir with this model, "
            f"or the model that wrote it")
    if has_state and marked is not None and marked != model:
        log.info("resuming the state of %s with %s: same vocabulary and row layout", marked.describe(),
                 model.describe())
    prepare_recovery_dir(settings)
    if marked != model:
        _write_marker(marker, model)


def _read_marker(marker: Path) -> ModelFingerprint:
    try:
        return ModelFingerprint.from_json(json.loads(marker.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RecoveryModelError(f"{marker} cannot be read ({error}): it names the model whose state this "
                                 f"recovery directory holds. Restore it, or use a fresh --recovery-dir") from None


def _write_marker(marker: Path, model: ModelFingerprint) -> None:
    """Atomically, so that a process stopped meanwhile leaves the old marker or the new one."""
    partial = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(json.dumps(model.to_json(), indent=2) + "\n")
    except OSError as error:
        partial.unlink(missing_ok=True)
        if is_volume_full(error, marker.parent):
            raise RecoveryVolumeFull(marker.parent) from None
        raise
    os.replace(partial, marker)
