"""`intentstream run`: options from the command line and the environment, their validation, the
Kafka client settings, and the checks that stop it before it consumes anything."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import pytest
from bytewax.recovery import init_db_dir

from stream.kafka.broker import fetch_metadata, free_loopback_port, produce_messages, read_topic
from stream.kafka.checks import KafkaCheckError, check_brokers, create_output_topics
from stream.kafka.config import KafkaConfigError, load_kafka_config, parse_properties, redacted
from stream.parsing import parse_duration
from stream.run import (
    EXIT_BAD_OPTION,
    EXIT_UNUSABLE,
    RECOVERY_MARKER,
    ModelFingerprint,
    RecoveryModelError,
    SettingsError,
    add_run_arguments,
    bind_recovery_dir,
    prepare_recovery_dir,
    run_command,
    settings_from_args,
    torch_threads_from_args,
)
from stream.settings import StreamSettings

REQUIRED = ["--brokers", "localhost:9092", "--model", "/models/m"]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="intentstream run")
    add_run_arguments(parser)
    return parser.parse_args(list(argv))


def settings(*argv: str, env: dict[str, str] | None = None) -> StreamSettings:
    return settings_from_args(parse(*REQUIRED, *argv), env or {})


def settings_error(*argv: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(SettingsError) as raised:
        settings(*argv, env=env)
    return str(raised.value)


# --- settings from arguments and environment ----------------------------------------------------


def test_defaults_are_the_stream_settings_defaults():
    assert settings() == StreamSettings(brokers="localhost:9092", model_dir=Path("/models/m"))


def test_every_option_from_the_command_line(tmp_path):
    (tmp_path / "rec").mkdir()
    init_db_dir(tmp_path / "rec", 2)  # a cluster process needs an initialised recovery directory
    resolved = settings(
        "--format", "JSON", "--input-topic", "in", "--output-topic", "out", "--dlq-topic", "dead",
        "--latest-topic", "last", "--batch-size", "64", "--history", "50", "--ttl", "7d",
        "--lateness", "90s", "--top-k", "5", "--backend", "eager:cuda", "--kv-cache-mb", "0",
        "--recovery-dir", str(tmp_path / "rec"),
        "--snapshot-interval", "500ms", "--workers", "2", "--process-id", "1",
        "--addresses", "a:2101, b:2101", "--stop-at-end",
    )
    assert resolved == StreamSettings(
        brokers="localhost:9092", model_dir=Path("/models/m"), format="json", input_topic="in",
        output_topic="out", dlq_topic="dead", latest_topic="last", batch_size=64, history=50,
        ttl_s=7 * 86_400.0, lateness_s=90.0, top_k=5, backend="eager:cuda", kv_cache_mb=0,
        recovery_dir=tmp_path / "rec",
        snapshot_interval_s=0.5, workers=2, process_id=1, addresses=("a:2101", "b:2101"), stop_at_end=True,
    )


def test_every_option_from_the_environment():
    env = {
        "INTENTSTREAM_BROKERS": "k1:9092,k2:9092", "INTENTSTREAM_MODEL": "/m", "INTENTSTREAM_FORMAT": "json",
        "INTENTSTREAM_INPUT_TOPIC": "in", "INTENTSTREAM_OUTPUT_TOPIC": "out", "INTENTSTREAM_DLQ_TOPIC": "dead",
        "INTENTSTREAM_LATEST_TOPIC": "", "INTENTSTREAM_BATCH_SIZE": "32", "INTENTSTREAM_HISTORY": "20",
        "INTENTSTREAM_TTL": "1h", "INTENTSTREAM_LATENESS": "0", "INTENTSTREAM_TOP_K": "3",
        "INTENTSTREAM_SNAPSHOT_INTERVAL": "2m", "INTENTSTREAM_WORKERS": "3", "INTENTSTREAM_PROCESS_ID": "0",
        "INTENTSTREAM_ADDRESSES": "h:1", "INTENTSTREAM_STOP_AT_END": "yes", "INTENTSTREAM_BACKEND": "aoti:/a",
        "INTENTSTREAM_KV_CACHE_MB": "64",
    }
    assert settings_from_args(parse(), env) == StreamSettings(
        brokers="k1:9092,k2:9092", model_dir=Path("/m"), format="json", input_topic="in", output_topic="out",
        dlq_topic="dead", latest_topic=None, batch_size=32, history=20, ttl_s=3600.0, lateness_s=0.0,
        top_k=3, snapshot_interval_s=120.0, workers=3, process_id=0, addresses=("h:1",), stop_at_end=True,
        backend="aoti:/a", kv_cache_mb=64,
    )


@pytest.mark.parametrize(
    "flag, env_name, cli_value, env_value, field, expected_cli, expected_env",
    [
        ("--batch-size", "INTENTSTREAM_BATCH_SIZE", "8", "16", "batch_size", 8, 16),
        ("--ttl", "INTENTSTREAM_TTL", "2d", "3d", "ttl_s", 172_800.0, 259_200.0),
        ("--input-topic", "INTENTSTREAM_INPUT_TOPIC", "cli-plays", "env-plays", "input_topic", "cli-plays", "env-plays"),
        ("--brokers", "INTENTSTREAM_BROKERS", "cli:1", "env:2", "brokers", "cli:1", "env:2"),
        ("--latest-topic", "INTENTSTREAM_LATEST_TOPIC", "", "env-latest", "latest_topic", None, "env-latest"),
    ],
)
def test_command_line_beats_environment_beats_default(
    flag, env_name, cli_value, env_value, field, expected_cli, expected_env
):
    base = ["--model", "/m"] + ([] if flag == "--brokers" else ["--brokers", "b:1"])
    env = {env_name: env_value}
    default = getattr(StreamSettings(brokers="b:1", model_dir=Path("/m")), field)

    assert getattr(settings_from_args(parse(*base, flag, cli_value), env), field) == expected_cli
    assert getattr(settings_from_args(parse(*base), env), field) == expected_env
    if flag != "--brokers":
        assert getattr(settings_from_args(parse(*base), {}), field) == default


def test_stop_at_end_flag_beats_the_environment():
    assert settings("--no-stop-at-end", env={"INTENTSTREAM_STOP_AT_END": "true"}).stop_at_end is False
    assert settings(env={"INTENTSTREAM_STOP_AT_END": "1"}).stop_at_end is True


@pytest.mark.parametrize(
    "text, seconds",
    [("30d", 2_592_000.0), ("1h", 3600.0), ("90s", 90.0), ("500ms", 0.5), ("1h30m", 5400.0),
     ("2w", 1_209_600.0), ("10", 10.0), ("0.25", 0.25), ("1.5h", 5400.0)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "3x", "1 h", "h", "1h30", "ms500", "-5s", "1d-2h"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    "argv, env, expected",
    [
        (["--batch-size", "0"], {}, "--batch-size '0': must be at least 1"),
        (["--batch-size", "many"], {}, "--batch-size 'many': not a whole number"),
        ([], {"INTENTSTREAM_BATCH_SIZE": "-3"}, "INTENTSTREAM_BATCH_SIZE='-3': must be at least 1"),
        (["--workers", "0"], {}, "--workers '0': must be at least 1"),
        (["--top-k", "0"], {}, "--top-k '0': must be at least 1"),
        (["--history", "0"], {}, "--history '0': must be at least 1"),
        (["--ttl", "3 days"], {}, "--ttl '3 days': not a duration: use e.g. 30d, 1h, 90s, 500ms"),
        (["--ttl", "0s"], {}, "--ttl '0s': must be longer than zero"),
        ([], {"INTENTSTREAM_LATENESS": "soon"}, "INTENTSTREAM_LATENESS='soon': not a duration"),
        (["--snapshot-interval", "0"], {}, "--snapshot-interval '0': must be longer than zero"),
        (["--format", "avro"], {}, "--format 'avro': unknown format: use json or msgpack"),
        (["--input-topic", "bad topic"], {}, "--input-topic 'bad topic': not a Kafka topic name"),
        (["--output-topic", "plays"], {}, "--input-topic and --output-topic are both 'plays'"),
        (["--latest-topic", "intent-dlq"], {}, "--dlq-topic and --latest-topic are both 'intent-dlq'"),
        (["--process-id", "0"], {}, "--process-id needs --addresses"),
        (["--addresses", "a:1,b:1"], {}, "--addresses is set but --process-id is not"),
        (["--process-id", "2", "--addresses", "a:1,b:1"], {}, "--process-id 2 is out of range"),
        (["--process-id", "-1", "--addresses", "a:1"], {}, "--process-id '-1': must be 0 or more"),
        (["--process-id", "0", "--addresses", "a:1,a:1"], {}, "--addresses lists the same host:port twice"),
        (["--process-id", "0", "--addresses", "a"], {}, "--addresses 'a': 'a' is not host:port"),
        (["--brokers", "kafka"], {}, "--brokers 'kafka': 'kafka' is not host:port"),
        (["--brokers", "k:99999"], {}, "--brokers 'k:99999'"),
        ([], {"INTENTSTREAM_STOP_AT_END": "maybe"}, "INTENTSTREAM_STOP_AT_END='maybe': not a yes/no value"),
        (["--backend", "onnx"], {}, "--backend 'onnx': expected eager, eager:cuda, aoti:PATH or tensorrt:PATH"),
        ([], {"INTENTSTREAM_BACKEND": "tensorrt"}, "INTENTSTREAM_BACKEND='tensorrt': expected eager"),
        (["--kv-cache-mb", "-1"], {}, "--kv-cache-mb '-1': must be 0 or more"),
    ],
)
def test_bad_options_say_what_to_fix(argv, env, expected):
    assert expected in settings_error(*argv, env=env)


def test_brokers_and_model_are_required():
    assert "pass --brokers HOST:PORT or set INTENTSTREAM_BROKERS" in str(
        pytest.raises(SettingsError, settings_from_args, parse("--model", "/m"), {}).value
    )
    assert "pass --model DIR" in str(pytest.raises(SettingsError, settings_from_args, parse("--brokers", "b:1"), {}).value)


def test_brokers_may_come_from_the_client_settings(tmp_path):
    config_file = tmp_path / "client.properties"
    config_file.write_text("bootstrap.servers=k1:9093,k2:9093\nsecurity.protocol=SSL\n")

    resolved = settings_from_args(parse("--model", "/m", "--kafka-config", str(config_file)), {})

    assert resolved.brokers == "k1:9093,k2:9093"
    assert resolved.kafka_config == {"security.protocol": "SSL"}
    assert settings_from_args(parse("--model", "/m", "--brokers", "x:1", "--kafka-config", str(config_file)), {}).brokers == "x:1"


# --- recovery directory -----------------------------------------------------------------------


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


# --- Kafka client settings ------------------------------------------------------------------------


def test_properties_file_syntax():
    text = "\n".join([
        "# a comment",
        "! another comment",
        "",
        "security.protocol=SASL_SSL",
        "  sasl.mechanism : PLAIN",
        "sasl.username alice",
        "ssl.ca.location=/etc/ssl/ca.pem",
        "sasl.password=p\\=ss\\:w\\u00f6rd",
        "client.id = intent\\",
        "    stream",
        "empty.value=",
    ])
    assert parse_properties(text) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "alice",
        "ssl.ca.location": "/etc/ssl/ca.pem",
        "sasl.password": "p=ss:wörd",
        "client.id": "intentstream",
        "empty.value": "",
    }


def test_bad_properties_say_where():
    with pytest.raises(KafkaConfigError, match=r"client.properties, line 2: bad unicode escape"):
        parse_properties("a=1\nb=\\u12\n", source="client.properties")


def test_environment_overrides_the_properties_file(tmp_path):
    config_file = tmp_path / "client.properties"
    config_file.write_text("security.protocol=SSL\nsasl.password=from-file\n")
    env = {
        "INTENTSTREAM_KAFKA_SASL_PASSWORD": "from-env",
        "INTENTSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "INTENTSTREAM_KAFKA_CONFIG": str(config_file),  # the file's path, not a client setting
        "INTENTSTREAM_BATCH_SIZE": "5",  # not a Kafka setting
    }
    assert load_kafka_config(config_file, env) == {"security.protocol": "SASL_SSL", "sasl.password": "from-env"}


def test_kafka_config_file_from_the_environment(tmp_path):
    config_file = tmp_path / "client.properties"
    config_file.write_text("client.id=svc\n")
    assert settings(env={"INTENTSTREAM_KAFKA_CONFIG": str(config_file)}).kafka_config == {"client.id": "svc"}


def test_a_missing_properties_file_is_a_bad_option(tmp_path):
    message = settings_error("--kafka-config", str(tmp_path / "nope.properties"))
    assert f"cannot read Kafka properties file {tmp_path / 'nope.properties'}" in message


def test_settings_the_connectors_manage_are_refused():
    message = settings_error(env={"INTENTSTREAM_KAFKA_ENABLE_AUTO_COMMIT": "true"})
    assert "enable.auto.commit are managed by intentstream" in message


def test_redacted_masks_every_secret_and_nothing_else():
    config = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "hunter2",
        "ssl.key.password": "k-pass",
        "ssl.key.pem": "-----BEGIN PRIVATE KEY-----",
        "sasl.oauthbearer.client.secret": "s3cret",
        "sasl.oauthbearer.config": "principal=x secret=y",
        "sasl.jaas.config": "org.apache...PlainLoginModule required password=z;",
        "ssl.ca.location": "/etc/ca.pem",
        "some.token": "t",
        "some.credentials": "c",
    }
    shown = redacted(config)

    assert shown == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "***",
        "ssl.key.password": "***",
        "ssl.key.pem": "***",
        "sasl.oauthbearer.client.secret": "***",
        "sasl.oauthbearer.config": "***",
        "sasl.jaas.config": "***",
        "ssl.ca.location": "/etc/ca.pem",
        "some.token": "***",
        "some.credentials": "***",
    }
    assert config["sasl.password"] == "hunter2"  # the original is not changed


def test_settings_repr_hides_the_client_settings():
    resolved = settings(env={"INTENTSTREAM_KAFKA_SASL_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(resolved)


# --- run_command: fails before consuming anything ------------------------------------------------


def test_a_bad_option_exits_2_with_the_message(clean_environ, capsys):
    assert run_command(parse(*REQUIRED, "--batch-size", "0")) == EXIT_BAD_OPTION
    assert "intentstream run: --batch-size '0': must be at least 1" in capsys.readouterr().err


def test_an_unreachable_broker_fails_fast_and_secrets_stay_out_of_the_log(clean_environ, capsys, caplog, tmp_path):
    address = f"127.0.0.1:{free_loopback_port()}"  # closed
    clean_environ.setenv("INTENTSTREAM_KAFKA_SASL_PASSWORD", "hunter2")
    clean_environ.setenv("INTENTSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    clean_environ.setenv("INTENTSTREAM_KAFKA_SASL_MECHANISM", "PLAIN")
    clean_environ.setenv("INTENTSTREAM_KAFKA_SASL_USERNAME", "alice")
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()

    code = run_command(parse("--brokers", address, "--model", str(tmp_path), "--connect-timeout", "1s"))

    err = capsys.readouterr().err
    assert code == EXIT_UNUSABLE
    assert time.monotonic() - started < 6
    assert f"cannot reach Kafka at {address} within 1s" in err
    assert "Connection refused" in err
    assert "check --brokers / INTENTSTREAM_BROKERS" in err
    assert "sasl.password" in caplog.text and "'***'" in caplog.text  # the startup line shows it, masked
    assert "hunter2" not in caplog.text + err


def test_a_missing_input_topic_is_named(clean_environ, capsys, kafka_bootstrap, topics, tmp_path):
    code = run_command(parse("--brokers", kafka_bootstrap, "--model", str(tmp_path), "--input-topic", "no-such-plays"))

    err = capsys.readouterr().err
    assert code == EXIT_UNUSABLE
    assert "input topic 'no-such-plays' does not exist" in err
    assert "--create --topic no-such-plays" in err
    assert "no-such-plays" not in fetch_metadata(kafka_bootstrap).topics  # the check did not auto-create it


def test_a_bad_model_stops_it_before_any_topic_is_created(clean_environ, capsys, kafka_bootstrap, topics, tmp_path):
    argv = ["--brokers", kafka_bootstrap, "--model", str(tmp_path / "no-model"), "--input-topic", topics.input,
            "--output-topic", topics.input + "-new-out", "--dlq-topic", topics.dlq, "--latest-topic", topics.latest,
            "--recovery-dir", str(tmp_path / "recovery")]

    code = run_command(parse(*argv))

    err = capsys.readouterr().err
    assert code == EXIT_UNUSABLE
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

    code = run_command(parse(*argv))

    err = capsys.readouterr().err
    assert code == EXIT_UNUSABLE
    assert f"intentstream run: {tmp_path / 'no-artifact'} is not a compiled artifact" in err
    assert "intentstream compile MODEL_DIR --backend aoti" in err
    assert read_topic(kafka_bootstrap, topics.dlq, timeout=2) == []  # nothing was consumed
    assert topics.input + "-new-out" not in fetch_metadata(kafka_bootstrap).topics
    assert not (tmp_path / "recovery").exists()


def test_torch_threads_come_from_the_command_line_or_the_environment():
    assert torch_threads_from_args(parse(*REQUIRED), {}) == 1
    assert torch_threads_from_args(parse(*REQUIRED), {"INTENTSTREAM_TORCH_THREADS": "4"}) == 4
    assert torch_threads_from_args(parse(*REQUIRED, "--torch-threads", "2"), {"INTENTSTREAM_TORCH_THREADS": "4"}) == 2
    with pytest.raises(SettingsError, match="--torch-threads '0': must be at least 1"):
        torch_threads_from_args(parse(*REQUIRED, "--torch-threads", "0"), {})


def test_check_brokers_reports_missing_outputs_and_create_output_topics_creates_them(kafka_bootstrap, make_topics):
    topics = make_topics(partitions=3)
    new_output, new_latest = topics.input + "-out2", topics.input + "-latest2"

    check = check_brokers(kafka_bootstrap, {}, topics.input, [new_output, topics.dlq, new_latest], timeout=10)
    assert check.input_partitions == 3
    assert check.missing_topics == (new_output, new_latest)

    create_output_topics(kafka_bootstrap, {}, check, compacted=[new_latest])
    listed = fetch_metadata(kafka_bootstrap).topics
    assert len(listed[new_output].partitions) == 3 and len(listed[new_latest].partitions) == 3
    assert _topic_config(kafka_bootstrap, new_latest)["cleanup.policy"] == "compact"
    assert _topic_config(kafka_bootstrap, new_output).get("cleanup.policy", "delete") == "delete"


def test_check_brokers_rejects_unknown_client_settings(kafka_bootstrap, topics):
    with pytest.raises(KafkaCheckError, match="Kafka client settings rejected: .*no.such.setting"):
        check_brokers(kafka_bootstrap, {"no.such.setting": "1"}, topics.input, [], timeout=5)


def _topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": bootstrap})
    (future,) = admin.describe_configs([ConfigResource("topic", topic)]).values()
    return {name: entry.value for name, entry in future.result(10).items()}


def test_check_brokers_finds_existing_topics(kafka_bootstrap, topics, make_topics):
    check = check_brokers(kafka_bootstrap, {}, topics.input, [topics.output, topics.dlq, topics.latest], timeout=5)
    assert check.missing_topics == ()
    assert check.input_partitions == 1
    assert check_brokers(kafka_bootstrap, {}, make_topics(partitions=2).input, [], timeout=5).input_partitions == 2


# --- run_command end to end ---------------------------------------------------------------------


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

    assert run_command(parse(*argv)) == 0

    updates = read_topic(kafka_bootstrap, topics.output, count=len(events), timeout=30)
    decoded = [decode_intent_update(r.value, "json") for r in updates]
    assert sorted(u.event_id for u in decoded) == sorted(e.event_id for e in events)
    assert all(r.key == u.user_id.encode() for r, u in zip(updates, decoded))
    assert len(read_topic(kafka_bootstrap, topics.dlq, timeout=10)) == 1
    assert len(read_topic(kafka_bootstrap, topics.latest, timeout=10)) == len(events)

    # A second run from the same recovery directory resumes at the end: nothing is scored twice.
    assert run_command(parse(*argv)) == 0
    assert len(read_topic(kafka_bootstrap, topics.output, timeout=10)) == len(events)
    assert "error" not in capsys.readouterr().err.lower()


# --- a recovery directory belongs to one model ----------------------------------------------------

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


def swapped_vocabulary_copy(model_dir: Path, destination: Path) -> Path:
    """The same model with two items' vocabulary indices swapped: it loads, but reads rows differently."""
    shutil.copytree(model_dir, destination)
    vocab = json.loads((destination / "vocab.json").read_text())
    vocab["items"][0], vocab["items"][1] = vocab["items"][1], vocab["items"][0]
    (destination / "vocab.json").write_text(json.dumps(vocab))
    return destination


def test_the_fingerprint_is_the_vocabulary_and_row_layout_of_the_model(tiny_model_dir, tmp_path):
    from model.serving.scorer import Scorer

    scorer = Scorer.load(tiny_model_dir)
    fingerprint = ModelFingerprint.of(scorer)

    assert fingerprint == ModelFingerprint.of(Scorer.load(tiny_model_dir))  # stable across loads
    assert (fingerprint.name, fingerprint.version) == (scorer.model_ref.name, scorer.model_ref.version)
    assert fingerprint.row_layout == str(scorer.row_dtype.descr)
    swapped = ModelFingerprint.of(Scorer.load(swapped_vocabulary_copy(tiny_model_dir, tmp_path / "swapped")))
    assert not swapped.reads_state_of(fingerprint)


def test_run_refuses_a_recovery_dir_of_another_vocabulary_before_consuming(
    clean_environ, capsys, kafka_bootstrap, topics, tiny_model_dir, tmp_path
):
    from model.serving.scorer import Scorer

    recovery = tmp_path / "recovery"
    bind_recovery_dir(settings("--recovery-dir", str(recovery)), ModelFingerprint.of(Scorer.load(tiny_model_dir)))
    produce_messages(kafka_bootstrap, topics.input, [(b"u", b"{not json")])
    swapped = swapped_vocabulary_copy(tiny_model_dir, tmp_path / "swapped")

    code = run_command(parse("--brokers", kafka_bootstrap, "--model", str(swapped), "--input-topic", topics.input,
                             "--output-topic", topics.output, "--dlq-topic", topics.dlq, "--latest-topic",
                             topics.latest, "--recovery-dir", str(recovery), "--stop-at-end"))  # fmt: skip

    assert code == EXIT_UNUSABLE
    err = capsys.readouterr().err
    assert f"--recovery-dir {recovery} holds the state of model" in err
    assert f"which --model {swapped}" in err and "Use a fresh --recovery-dir" in err
    assert read_topic(kafka_bootstrap, topics.dlq, timeout=2) == []  # nothing was consumed
