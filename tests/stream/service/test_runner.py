"""`intentstream run` through its command line: what stops it before it consumes anything, and a whole run."""
from __future__ import annotations

import logging
import time

from stream.errors import EXIT_FAILED, EXIT_USAGE
from stream.kafka.broker import fetch_metadata, free_loopback_port, produce_messages, read_topic
from stream.service.recovery import ModelFingerprint, bind_recovery_dir
from tests.stream.service.run_args import REQUIRED, run, settings, swapped_vocabulary_copy


def test_a_bad_option_exits_2_with_the_message(clean_environ, capsys):
    assert run(*REQUIRED, "--batch-size", "0") == EXIT_USAGE
    assert "intentstream run: --batch-size '0': must be at least 1" in capsys.readouterr().err


def test_an_unreachable_broker_fails_fast_and_secrets_stay_out_of_the_log(clean_environ, capsys, caplog, tmp_path):
    address = f"127.0.0.1:{free_loopback_port()}"  # closed
    clean_environ.setenv("INTENTSTREAM_KAFKA_SASL_PASSWORD", "hunter2")
    clean_environ.setenv("INTENTSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    clean_environ.setenv("INTENTSTREAM_KAFKA_SASL_MECHANISM", "PLAIN")
    clean_environ.setenv("INTENTSTREAM_KAFKA_SASL_USERNAME", "alice")
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()

    code = run("--brokers", address, "--model", str(tmp_path), "--connect-timeout", "1s")

    err = capsys.readouterr().err
    assert code == EXIT_FAILED
    assert time.monotonic() - started < 6
    assert f"cannot reach Kafka at {address} within 1s" in err
    assert "Connection refused" in err
    assert "check --brokers / INTENTSTREAM_BROKERS" in err
    assert "sasl.password" in caplog.text and "'***'" in caplog.text  # the startup line shows it, masked
    assert "hunter2" not in caplog.text + err


def test_a_missing_input_topic_is_named(clean_environ, capsys, kafka_bootstrap, topics, tmp_path):
    code = run("--brokers", kafka_bootstrap, "--model", str(tmp_path), "--input-topic", "no-such-plays")

    err = capsys.readouterr().err
    assert code == EXIT_FAILED
    assert "topic 'no-such-plays' (--input-topic) does not exist" in err
    assert "--create --topic no-such-plays" in err
    assert "no-such-plays" not in fetch_metadata(kafka_bootstrap).topics  # the check did not auto-create it


def test_a_bad_model_stops_it_before_any_topic_is_created(clean_environ, capsys, kafka_bootstrap, topics, tmp_path):
    argv = ["--brokers", kafka_bootstrap, "--model", str(tmp_path / "no-model"), "--input-topic", topics.input,
            "--output-topic", topics.input + "-new-out", "--dlq-topic", topics.dlq, "--latest-topic", topics.latest,
            "--recovery-dir", str(tmp_path / "recovery")]

    code = run(*argv)

    err = capsys.readouterr().err
    assert code == EXIT_FAILED
    assert f"model directory {tmp_path / 'no-model'} does not exist" in err
    assert topics.input + "-new-out" not in fetch_metadata(kafka_bootstrap).topics
    assert not (tmp_path / "recovery").exists()


def test_a_backend_that_cannot_be_loaded_stops_it_before_consuming(
    clean_environ, capsys, kafka_bootstrap, topics, tiny_model_dir, tmp_path
):
    produce_messages(kafka_bootstrap, topics.input, [(b"u", b"{not json")])
    argv = ["--brokers", kafka_bootstrap, "--model", str(tiny_model_dir), "--input-topic", topics.input,
            "--output-topic", topics.input + "-new-out", "--dlq-topic", topics.dlq, "--latest-topic", topics.latest,
            "--recovery-dir", str(tmp_path / "recovery"), "--backend", f"aoti:{tmp_path / 'no-artifact'}",
            "--stop-at-end"]

    code = run(*argv)

    err = capsys.readouterr().err
    assert code == EXIT_FAILED
    assert f"intentstream run: {tmp_path / 'no-artifact'} is not a compiled artifact" in err
    assert "intentstream compile MODEL_DIR --backend aoti" in err
    assert read_topic(kafka_bootstrap, topics.dlq, timeout=2) == []  # nothing was consumed
    assert topics.input + "-new-out" not in fetch_metadata(kafka_bootstrap).topics
    assert not (tmp_path / "recovery").exists()


def test_a_kv_cache_the_machine_cannot_hold_stops_it_before_consuming(
    clean_environ, capsys, kafka_bootstrap, topics, tiny_model_dir, tmp_path
):
    produce_messages(kafka_bootstrap, topics.input, [(b"u", b"{not json")])
    argv = ["--brokers", kafka_bootstrap, "--model", str(tiny_model_dir), "--input-topic", topics.input,
            "--output-topic", topics.input + "-new-out", "--dlq-topic", topics.dlq, "--latest-topic", topics.latest,
            "--kv-cache-mb", str(1 << 32), "--stop-at-end"]  # 4 PiB

    code = run(*argv)

    err = capsys.readouterr().err
    assert code == EXIT_FAILED
    assert "cannot be allocated on this machine; give it less memory (--kv-cache-mb)" in err
    assert "Traceback" not in err
    assert read_topic(kafka_bootstrap, topics.dlq, timeout=2) == []  # nothing was consumed


def test_run_scores_every_event_and_resumes_from_its_recovery_dir(
    clean_environ, capsys, kafka_bootstrap, make_topics, tiny_model_dir, tmp_path
):
    from model.playlogs.synth import generate_world
    from schemas import decode_intent_update, encode_play_event

    topics = make_topics(partitions=2)
    events = generate_world(seed=1, n_users=4, n_titles=30, days=3)[:40]
    produce_messages(kafka_bootstrap, topics.input,
                     [(e.user_id.encode(), encode_play_event(e, "json")) for e in events] + [(b"u", b"{not json")])
    clean_environ.setenv("INTENTSTREAM_FORMAT", "json")
    clean_environ.setenv("INTENTSTREAM_KAFKA_CLIENT_ID", "run-test")  # a pass-through setting the clients accept
    argv = ["--brokers", kafka_bootstrap, "--model", str(tiny_model_dir), "--input-topic", topics.input,
            "--output-topic", topics.output, "--dlq-topic", topics.dlq, "--latest-topic", topics.latest,
            "--recovery-dir", str(tmp_path / "recovery"), "--snapshot-interval", "1s", "--stop-at-end"]

    assert run(*argv) == 0

    updates = read_topic(kafka_bootstrap, topics.output, count=len(events), timeout=30)
    decoded = [decode_intent_update(r.value, "json") for r in updates]
    assert sorted(u.event_id for u in decoded) == sorted(e.event_id for e in events)
    assert all(r.key == u.user_id.encode() for r, u in zip(updates, decoded))
    assert len(read_topic(kafka_bootstrap, topics.dlq, timeout=10)) == 1
    assert len(read_topic(kafka_bootstrap, topics.latest, timeout=10)) == len(events)

    # A second run from the same recovery directory resumes at the end: nothing is scored twice.
    assert run(*argv) == 0
    assert len(read_topic(kafka_bootstrap, topics.output, timeout=10)) == len(events)
    assert "error" not in capsys.readouterr().err.lower()


def test_run_refuses_a_recovery_dir_of_another_vocabulary_before_consuming(
    clean_environ, capsys, kafka_bootstrap, topics, tiny_model_dir, tmp_path
):
    from model.serving.scorer import Scorer

    recovery = tmp_path / "recovery"
    bind_recovery_dir(settings("--recovery-dir", str(recovery)), ModelFingerprint.of(Scorer.load(tiny_model_dir)))
    produce_messages(kafka_bootstrap, topics.input, [(b"u", b"{not json")])
    swapped = swapped_vocabulary_copy(tiny_model_dir, tmp_path / "swapped")

    code = run("--brokers", kafka_bootstrap, "--model", str(swapped), "--input-topic", topics.input,
                             "--output-topic", topics.output, "--dlq-topic", topics.dlq, "--latest-topic",
                             topics.latest, "--recovery-dir", str(recovery), "--stop-at-end")  # fmt: skip

    assert code == EXIT_FAILED
    err = capsys.readouterr().err
    assert f"--recovery-dir {recovery} holds the state of model" in err
    assert f"which --model {swapped}" in err and "Use a fresh --recovery-dir" in err
    assert read_topic(kafka_bootstrap, topics.dlq, timeout=2) == []  # nothing was consumed
