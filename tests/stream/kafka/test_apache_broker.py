"""stream.kafka.apache_broker.ApacheKafkaBroker: a real Apache Kafka 4.x broker (KRaft) from the official
jars. These tests fail, never skip, where java or the jars are missing (deploy/kafka/fetch.sh fetches
them from Maven Central)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from stream.kafka.apache_broker import ApacheKafkaBroker
from stream.kafka.broker import create_topics, fetch_metadata, produce_messages, read_topic


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with ApacheKafkaBroker(tmp_path_factory.mktemp("apache-kafka")) as running:
        yield running


def values_by_key(records):
    found: dict[bytes, list[bytes]] = {}
    for record in sorted(records, key=lambda r: r.offset):
        found.setdefault(record.key, []).append(record.value)
    return found


def test_produce_and_read_back(broker):
    create_topics(broker.bootstrap, ["plays"], partitions=3)
    sent = [(f"user-{i % 5}".encode(), f"event-{i}".encode()) for i in range(50)]

    assert produce_messages(broker.bootstrap, "plays", sent) == 50
    records = read_topic(broker.bootstrap, "plays", count=50, timeout=20)

    assert sorted((r.key, r.value) for r in records) == sorted(sent)
    assert values_by_key(records)[b"user-0"] == [v for k, v in sent if k == b"user-0"]


def test_topics_are_not_auto_created(broker):
    create_topics(broker.bootstrap, ["made"])
    with pytest.raises(RuntimeError, match="not delivered"):
        produce_messages(broker.bootstrap, "never-made", [(b"k", b"v")], timeout=1)
    assert "never-made" not in fetch_metadata(broker.bootstrap).topics


def thread_states(pid: int) -> set[str]:
    return {stat.read_text().rsplit(")", 1)[1].split()[0] for stat in Path(f"/proc/{pid}/task").glob("*/stat")}


def test_a_frozen_broker_has_every_thread_stopped_before_the_block_runs(broker):
    # SIGSTOP acts only once one thread is scheduled to take it; meanwhile the others serve requests.
    for _ in range(20):
        with broker.frozen():
            assert thread_states(broker.pid) <= set("tT")
        assert not thread_states(broker.pid) & set("tT")
    create_topics(broker.bootstrap, ["thawed"])
    assert produce_messages(broker.bootstrap, "thawed", [(b"k", b"v")]) == 1


def test_compaction_drops_superseded_values_of_a_key(broker):
    create_topics(
        broker.bootstrap,
        ["latest"],
        config={
            "cleanup.policy": "compact",
            "segment.ms": "100",
            "min.cleanable.dirty.ratio": "0.01",
            "min.compaction.lag.ms": "0",
        },
    )
    produce_messages(broker.bootstrap, "latest", [(b"alice", f"v{i}".encode()) for i in range(1, 6)])
    produce_messages(broker.bootstrap, "latest", [(b"bob", b"v1")])
    # Only closed segments are compacted, and a segment rolls (after segment.ms) on the next write.
    time.sleep(0.3)
    produce_messages(broker.bootstrap, "latest", [(b"carol", b"v1")])

    deadline = time.monotonic() + 30
    while True:
        latest = values_by_key(read_topic(broker.bootstrap, "latest", timeout=10))
        if latest[b"alice"] == [b"v5"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert latest == {b"alice": [b"v5"], b"bob": [b"v1"], b"carol": [b"v1"]}


def test_data_survives_a_restart_and_a_crash(tmp_path):
    broker = ApacheKafkaBroker(tmp_path / "kafka")
    with broker:
        create_topics(broker.bootstrap, ["kept"], partitions=2)
        before = [(f"k{i}".encode(), f"before-restart-{i}".encode()) for i in range(20)]
        produce_messages(broker.bootstrap, "kept", before)
        bootstrap = broker.bootstrap

        broker.restart()
        assert broker.bootstrap == bootstrap  # same ports: clients' settings stay valid
        assert sorted((r.key, r.value) for r in read_topic(broker.bootstrap, "kept", count=20, timeout=20)) == sorted(before)

        # Acknowledged writes are in the page cache, so a killed JVM loses none of them.
        after = [(f"k{i}".encode(), f"before-crash-{i}".encode()) for i in range(20)]
        produce_messages(broker.bootstrap, "kept", after)
        broker.kill()
        broker.start()
        records = read_topic(broker.bootstrap, "kept", count=40, timeout=20)
        assert sorted((r.key, r.value) for r in records) == sorted(before + after)
    assert (tmp_path / "kafka" / "data" / "meta.properties").exists()  # a given work dir is kept


def test_temporary_work_dir_is_removed_by_a_clean_stop():
    with ApacheKafkaBroker() as broker:
        work_dir = broker.work_dir
        assert (work_dir / "data").is_dir()
    assert not work_dir.exists()


def test_a_broker_that_does_not_answer_in_time_is_an_error_naming_its_log(tmp_path):
    broker = ApacheKafkaBroker(tmp_path, start_timeout=0.01)
    with pytest.raises(RuntimeError, match="did not start") as raised:
        broker.start()
    assert str(broker.log_path) in str(raised.value)
    assert broker._process is None  # nothing left running


def test_missing_jars_are_an_error_that_says_how_to_get_them(tmp_path):
    with pytest.raises(RuntimeError, match="fetch.sh"):
        ApacheKafkaBroker(tmp_path, libs=tmp_path).start()


def test_a_cluster_id_that_starts_with_a_dash_still_formats(tmp_path, monkeypatch):
    import uuid

    import stream.kafka.apache_broker as apache_broker

    dashed = uuid.UUID(bytes=b"\xf8" + bytes(15))  # base64 "-AAAA...": one random id in 64
    monkeypatch.setattr(apache_broker.uuid, "uuid4", lambda: dashed)
    with ApacheKafkaBroker(tmp_path / "kafka") as broker:
        create_topics(broker.bootstrap, ["dashed"])
