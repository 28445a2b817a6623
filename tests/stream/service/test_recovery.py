"""The recovery directory: checked with the options, bound to one model."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from bytewax.recovery import init_db_dir

from stream.errors import EXIT_DISK_FULL, CommandError
from stream.service.recovery import (
    RECOVERY_MARKER, ModelFingerprint, RecoveryModelError, RecoveryVolumeFull, bind_recovery_dir, code_in_pickle,
    prepare_recovery_dir,
)
from stream.small_volume import SmallVolume
from stream.state import StateConfig, UserState
from tests.stream.service.run_args import settings, settings_error, swapped_vocabulary_copy


def test_an_absent_or_empty_recovery_dir_is_accepted_and_left_untouched(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    absent = tmp_path / "not" / "yet"

    assert settings("--recovery-dir", str(empty)).recovery_dir == empty
    assert settings("--recovery-dir", str(absent)).recovery_dir == absent
    assert list(empty.iterdir()) == [] and not absent.exists()


def test_prepare_recovery_dir_creates_one_partition_per_worker(tmp_path):
    directory = tmp_path / "recovery"
    prepare_recovery_dir(settings("--recovery-dir", str(directory), "--workers", "3"))

    assert sorted(p.name for p in directory.iterdir()) == ["part-0.sqlite3", "part-1.sqlite3", "part-2.sqlite3"]
    # Initialised now, so accepted as it is and never re-initialised.
    prepare_recovery_dir(settings("--recovery-dir", str(directory), "--workers", "1"))
    assert len(list(directory.iterdir())) == 3


def test_an_initialised_recovery_dir_is_accepted(tmp_path):
    init_db_dir(tmp_path, 2)
    assert settings("--recovery-dir", str(tmp_path)).recovery_dir == tmp_path


def test_a_recovery_dir_missing_a_partition_is_refused(tmp_path):
    init_db_dir(tmp_path, 3)
    (tmp_path / "part-1.sqlite3").unlink()

    assert "lacks recovery partition(s) part-1.sqlite3 of 3" in settings_error("--recovery-dir", str(tmp_path))


def test_a_recovery_dir_with_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")

    message = settings_error("--recovery-dir", str(tmp_path))
    assert "holds no Bytewax recovery partitions" in message
    assert f"python -m bytewax.recovery {tmp_path} N" in message


def test_a_recovery_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    assert "is not a directory" in settings_error("--recovery-dir", str(tmp_path / "file"))


def test_a_cluster_needs_an_initialised_recovery_dir(tmp_path):
    message = settings_error("--recovery-dir", str(tmp_path), "--process-id", "0", "--addresses", "a:1,b:1")
    assert "a cluster does not create them itself" in message
    assert "python -m bytewax.recovery" in message


MODEL_A = ModelFingerprint("intentrec", "1", "a" * 64, "[('item', '<i4'), ('ts', '<i8')]")


def marker_of(directory: Path) -> dict:
    return json.loads((directory / RECOVERY_MARKER).read_text())


def test_a_new_recovery_dir_is_initialised_and_marked_with_its_model(tmp_path):
    directory = tmp_path / "recovery"
    bind_recovery_dir(settings("--recovery-dir", str(directory), "--workers", "2"), MODEL_A)

    assert sorted(p.name for p in directory.iterdir()) == [RECOVERY_MARKER, "part-0.sqlite3", "part-1.sqlite3"]
    assert marker_of(directory) == {"model": {"name": "intentrec", "version": "1"}, "vocab_sha256": "a" * 64,
                                    "row_layout": MODEL_A.row_layout}  # fmt: skip
    assert settings("--recovery-dir", str(directory)).recovery_dir == directory  # the marker is no stranger


@pytest.mark.parametrize(
    "other",
    [dataclasses.replace(MODEL_A, name="other", vocab_sha256="b" * 64),
     dataclasses.replace(MODEL_A, row_layout="[('item', '<i8'), ('ts', '<i8')]")],
    ids=["another vocabulary", "another row layout"],
)
def test_a_recovery_dir_is_refused_to_a_model_that_cannot_read_its_state(tmp_path, other):
    bind_recovery_dir(settings("--recovery-dir", str(tmp_path)), MODEL_A)
    before = sorted(p.name for p in tmp_path.iterdir())

    with pytest.raises(RecoveryModelError) as raised:
        bind_recovery_dir(settings("--recovery-dir", str(tmp_path)), other)

    message = str(raised.value)
    assert f"--recovery-dir {tmp_path} holds the state of model 'intentrec' version 1" in message
    assert "Use a fresh --recovery-dir with this model, or the model that wrote it" in message
    assert marker_of(tmp_path) == MODEL_A.to_json() and sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_retrained_model_with_the_same_vocabulary_resumes_it(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    bind_recovery_dir(settings("--recovery-dir", str(tmp_path)), MODEL_A)
    retrained = dataclasses.replace(MODEL_A, version="2")

    bind_recovery_dir(settings("--recovery-dir", str(tmp_path)), retrained)

    assert marker_of(tmp_path)["model"] == {"name": "intentrec", "version": "2"}
    assert "resuming the state of model 'intentrec' version 1 (vocabulary sha256 aaaaaaaaaaaa) with model " \
           "'intentrec' version 2" in caplog.text


def test_a_recovery_dir_initialised_by_hand_is_marked_on_first_use(tmp_path):
    init_db_dir(tmp_path, 2)
    bind_recovery_dir(settings("--recovery-dir", str(tmp_path)), MODEL_A)
    assert sorted(p.name for p in tmp_path.iterdir()) == [RECOVERY_MARKER, "part-0.sqlite3", "part-1.sqlite3"]
    assert marker_of(tmp_path) == MODEL_A.to_json()


def test_a_marker_without_partitions_binds_nothing(tmp_path):
    """Deleting the part-* files starts from scratch, with any model."""
    (tmp_path / RECOVERY_MARKER).write_text(json.dumps(MODEL_A.to_json()))
    other = dataclasses.replace(MODEL_A, vocab_sha256="c" * 64)

    bind_recovery_dir(settings("--recovery-dir", str(tmp_path)), other)

    assert (tmp_path / "part-0.sqlite3").exists()
    assert marker_of(tmp_path) == other.to_json()


def test_an_unreadable_marker_is_refused(tmp_path):
    init_db_dir(tmp_path, 1)
    (tmp_path / RECOVERY_MARKER).write_text('{"model": ')
    with pytest.raises(RecoveryModelError, match=f"{RECOVERY_MARKER} cannot be read"):
        bind_recovery_dir(settings("--recovery-dir", str(tmp_path)), MODEL_A)


def test_the_fingerprint_is_the_vocabulary_and_row_layout_of_the_model(tiny_model_dir, tmp_path):
    from model.serving.scorer import Scorer

    scorer = Scorer.load(tiny_model_dir)
    fingerprint = ModelFingerprint.of(scorer)

    assert fingerprint == ModelFingerprint.of(Scorer.load(tiny_model_dir))  # stable across loads
    assert (fingerprint.name, fingerprint.version) == (scorer.model_ref.name, scorer.model_ref.version)
    assert fingerprint.row_layout == str(scorer.row_dtype.descr)
    swapped = ModelFingerprint.of(Scorer.load(swapped_vocabulary_copy(tiny_model_dir, tmp_path / "swapped")))
    assert not swapped.reads_state_of(fingerprint)


class RunsACommand:
    """What an attacker would plant: unpickling it runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_snapshot(directory: Path, value: object, epoch: int) -> None:
    with closing(sqlite3.connect(directory / "part-0.sqlite3")) as db, db:
        db.execute("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, ?, ?)",
                   ("intentstream.remember", "user-1", epoch, pickle.dumps(value)))


def test_a_recovery_dir_holding_a_snapshot_that_would_run_code_is_refused_without_running_it(tmp_path):
    directory, marker = tmp_path / "rec", tmp_path / "ran"
    directory.mkdir()
    init_db_dir(directory, 1)
    state = UserState(StateConfig(np.dtype([("item", np.int32)]), context=2, capacity=4, lateness_ms=0, ttl_ms=1))
    plant_snapshot(directory, state.snapshot(), epoch=1)  # what the service itself writes
    settings("--recovery-dir", str(directory))  # accepted
    plant_snapshot(directory, RunsACommand(marker), epoch=2)
    error = settings_error("--recovery-dir", str(directory))
    assert "part-0.sqlite3: the snapshot of step 'intentstream.remember', key 'user-1' is not plain data" in error
    assert "tampered with" in error
    assert not marker.exists()  # checked without unpickling


def test_the_check_reads_the_partitions_where_they_are_wal_included_and_changes_nothing(tmp_path, monkeypatch):
    directory, marker = tmp_path / "rec", tmp_path / "ran"
    directory.mkdir()
    init_db_dir(directory, 1)
    # A run killed after writing: its last snapshot is in the write-ahead log, not yet in the partition.
    planted = (f"import pickle, sqlite3, os; db = sqlite3.connect({str(directory / 'part-0.sqlite3')!r}); "
               "db.execute('INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, ?, ?)', "
               f"('intentstream.remember', 'user-1', 1, {pickle.dumps(RunsACommand(marker))!r})); db.commit(); "
               "os._exit(0)")  # fmt: skip
    subprocess.run([sys.executable, "-c", planted], check=True)
    kept = ["part-0.sqlite3", "part-0.sqlite3-wal"]  # not -shm: SQLite's index of the log, in shared memory
    files = [(directory / name).read_bytes() for name in kept]
    assert files[1]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-dir"))  # a copy would need the temp directory

    error = settings_error("--recovery-dir", str(directory))
    assert "key 'user-1' is not plain data" in error and not marker.exists()
    assert [(directory / name).read_bytes() for name in kept] == files


@pytest.fixture
def volume(tmp_path):
    with SmallVolume(tmp_path / "volume", 4 << 20) as volume:
        yield volume


def test_a_recovery_dir_on_a_full_volume_is_refused_with_status_74_naming_it(volume):
    directory = volume.path / "rec"
    directory.mkdir()
    init_db_dir(directory, 1)
    volume.fill()

    with pytest.raises(CommandError) as raised:
        settings("--recovery-dir", str(directory))
    assert raised.value.status == EXIT_DISK_FULL == 74
    assert str(raised.value).startswith(f"no space left for the recovery directory {directory.resolve()} (0 bytes free")
    volume.free()
    assert settings("--recovery-dir", str(directory)).recovery_dir == directory


def test_initialising_a_recovery_dir_on_a_full_volume_says_so_and_leaves_no_half_partition(volume):
    directory = volume.path / "rec"
    checked = settings("--recovery-dir", str(directory))  # there was room when the options were checked
    volume.fill()
    with pytest.raises(RecoveryVolumeFull, match=f"recovery directory {directory.resolve()} "):
        bind_recovery_dir(checked, MODEL_A)
    assert list(directory.iterdir()) == []
    volume.free()
    bind_recovery_dir(settings("--recovery-dir", str(directory)), MODEL_A)
    assert marker_of(directory) == MODEL_A.to_json()


def test_marking_a_recovery_dir_on_a_full_volume_says_so(volume):
    directory = volume.path / "rec"
    directory.mkdir()
    init_db_dir(directory, 1)
    checked = settings("--recovery-dir", str(directory))
    volume.fill()
    with pytest.raises(RecoveryVolumeFull, match=f"recovery directory {directory.resolve()} "):
        bind_recovery_dir(checked, MODEL_A)
    assert sorted(path.name for path in directory.iterdir()) == ["part-0.sqlite3"]


def test_the_service_s_own_snapshots_are_plain_data_and_anything_that_imports_is_not():
    assert code_in_pickle(pickle.dumps((b"\x00\x01", None))) is None
    assert code_in_pickle(pickle.dumps({"offset": 17, "parts": [1.5, "a"]})) is None
    assert code_in_pickle(pickle.dumps(RunsACommand(Path("x")))) == f"it imports {os.system.__module__}.system"
    assert code_in_pickle(pickle.dumps(Path("x"))) == "it imports pathlib.PosixPath"
    assert code_in_pickle(pickle.dumps(Path("x"), protocol=0)).startswith("GLOBAL")
    assert code_in_pickle(b"\x80\x05garbage").startswith("a malformed pickle")
