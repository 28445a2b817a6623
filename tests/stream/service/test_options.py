"""`intentstream run`'s settings from the command line, the environment and the defaults."""
from __future__ import annotations

from pathlib import Path

import pytest
from bytewax.recovery import init_db_dir

from stream.errors import CommandError
from stream.service.options import service_settings_from_args, settings_from_args
from stream.settings import StreamSettings
from tests.stream.service.run_args import REQUIRED, parse, settings, settings_error


def test_defaults_are_the_stream_settings_defaults():
    assert settings() == StreamSettings(brokers="localhost:9092", model_dir=Path("/models/m"))


def test_every_option_from_the_command_line(tmp_path):
    (tmp_path / "rec").mkdir()
    init_db_dir(tmp_path / "rec", 2)  # a cluster process needs an initialised recovery directory
    resolved = settings(
        "--format", "JSON", "--input-topic", "in", "--output-topic", "out", "--dlq-topic", "dead",
        "--latest-topic", "last", "--batch-size", "64", "--history", "50", "--ttl", "7d",
        "--lateness", "90s", "--max-clock-skew", "1m", "--top-k", "5", "--backend", "eager:cuda", "--kv-cache-mb", "0",
        "--max-users", "5000", "--on-offset-gap", "FAIL", "--catalogue", "approximate",
        "--recovery-dir", str(tmp_path / "rec"),
        "--snapshot-interval", "500ms", "--workers", "2", "--process-id", "1",
        "--addresses", "a:2101, b:2101", "--stop-at-end",
    )
    assert resolved == StreamSettings(
        brokers="localhost:9092", model_dir=Path("/models/m"), format="json", input_topic="in",
        output_topic="out", dlq_topic="dead", latest_topic="last", batch_size=64, history=50,
        ttl_s=7 * 86_400.0, lateness_s=90.0, max_clock_skew_s=60.0, top_k=5, backend="eager:cuda", kv_cache_mb=0,
        max_users=5000, on_offset_gap="fail", catalogue="approximate", recovery_dir=tmp_path / "rec",
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
        "INTENTSTREAM_KV_CACHE_MB": "64", "INTENTSTREAM_MAX_USERS": "70", "INTENTSTREAM_ON_OFFSET_GAP": "fail",
        "INTENTSTREAM_CATALOGUE": "exact",
    }
    assert settings_from_args(parse(), env) == StreamSettings(
        brokers="k1:9092,k2:9092", model_dir=Path("/m"), format="json", input_topic="in", output_topic="out",
        dlq_topic="dead", latest_topic=None, batch_size=32, history=20, ttl_s=3600.0, lateness_s=0.0,
        top_k=3, snapshot_interval_s=120.0, workers=3, process_id=0, addresses=("h:1",), stop_at_end=True,
        backend="aoti:/a", kv_cache_mb=64, max_users=70, on_offset_gap="fail", catalogue="exact",
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
        (["--backend", "onnx"], {}, "--backend 'onnx': expected auto, eager, eager:cuda, aoti:PATH or tensorrt:PATH"),
        ([], {"INTENTSTREAM_BACKEND": "tensorrt"}, "INTENTSTREAM_BACKEND='tensorrt': expected auto, eager"),
        (["--kv-cache-mb", "-1"], {}, "--kv-cache-mb '-1': must be 0 or more"),
        (["--ttl", "1s", "--lateness", "1h"], {}, "--ttl 1s is shorter than --lateness 1h"),
        ([], {"INTENTSTREAM_MAX_CLOCK_SKEW": "soon"}, "INTENTSTREAM_MAX_CLOCK_SKEW='soon': not a duration"),
        (["--catalogue", "sampled"], {}, "--catalogue 'sampled'"),
    ],
)
def test_bad_options_say_what_to_fix(argv, env, expected):
    assert expected in settings_error(*argv, env=env)


def test_brokers_and_model_are_required():
    assert "pass --brokers HOST:PORT or set INTENTSTREAM_BROKERS" in str(
        pytest.raises(CommandError, settings_from_args, parse("--model", "/m"), {}).value
    )
    assert "pass --model DIR" in str(pytest.raises(CommandError, settings_from_args, parse("--brokers", "b:1"), {}).value)


def test_brokers_may_come_from_the_client_settings(tmp_path):
    config_file = tmp_path / "client.properties"
    config_file.write_text("bootstrap.servers=k1:9093,k2:9093\nsecurity.protocol=SSL\n")

    resolved = settings_from_args(parse("--model", "/m", "--kafka-config", str(config_file)), {})

    assert resolved.brokers == "k1:9093,k2:9093"
    assert resolved.kafka_config == {"security.protocol": "SSL"}
    assert settings_from_args(parse("--model", "/m", "--brokers", "x:1", "--kafka-config", str(config_file)), {}).brokers == "x:1"


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


def test_the_reset_of_out_of_range_offsets_is_managed():
    # librdkafka's auto.offset.reset=latest would skip unread input silently; --on-offset-gap decides.
    message = settings_error(env={"INTENTSTREAM_KAFKA_AUTO_OFFSET_RESET": "latest"})
    assert "auto.offset.reset are managed by intentstream" in message


@pytest.mark.parametrize("argv, complaint", [
    (["--on-offset-gap", "skip"], "--on-offset-gap 'skip': use resume or fail"),
    (["--max-users", "0"], "--max-users '0': must be at least 1"),
    (["--max-users", "3", "--workers", "4"], "--max-users 3 is fewer than --workers 4: each worker thread holds an "
                                             "equal share of the users; allow at least one user per worker"),
])
def test_bad_gap_policy_or_user_cap_is_refused(argv, complaint):
    assert settings_error(*argv) == complaint


def test_settings_repr_hides_the_client_settings():
    resolved = settings(env={"INTENTSTREAM_KAFKA_SASL_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(resolved)


def test_torch_threads_come_from_the_command_line_or_the_environment():
    def torch_threads(*argv: str, env: dict[str, str]) -> int:
        return service_settings_from_args(parse(*REQUIRED, *argv), env).torch_threads

    assert torch_threads(env={}) == 1
    assert torch_threads(env={"INTENTSTREAM_TORCH_THREADS": "4"}) == 4
    assert torch_threads("--torch-threads", "2", env={"INTENTSTREAM_TORCH_THREADS": "4"}) == 2
    with pytest.raises(CommandError, match="--torch-threads '0': must be at least 1"):
        torch_threads("--torch-threads", "0", env={})
