"""`intentstream serve`'s options: command line, then INTENTSTREAM_*, then LookupSettings' defaults; the token
and the TLS files."""
from __future__ import annotations

import pytest

from stream.cli import build_parser
from stream.errors import CommandError
from stream.lookup.options import lookup_settings_from_args
from stream.settings import LookupSettings
from tests.stream.lookup.certificates import make_certificates


def settings(*argv: str, env: dict[str, str] | None = None) -> LookupSettings:
    return lookup_settings_from_args(build_parser().parse_args(["serve", *argv]), env or {})


def test_defaults_and_where_options_come_from():
    assert settings("--brokers", "k:9092") == LookupSettings(brokers="k:9092")
    chosen = settings("--brokers", "k:9092", "--port", "9000", env={
        "INTENTSTREAM_PORT": "9001", "INTENTSTREAM_MAX_USERS": "500", "INTENTSTREAM_ON_FULL": "refuse",
        "INTENTSTREAM_TOPIC": "latest", "INTENTSTREAM_FORMAT": "json", "INTENTSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
    })  # fmt: skip
    assert (chosen.port, chosen.max_users, chosen.on_full, chosen.topic, chosen.format) == (
        9000, 500, "refuse", "latest", "json")  # fmt: skip
    assert chosen.kafka_config == {"security.protocol": "SSL"}


@pytest.mark.parametrize("argv, expected", [
    ([], "no Kafka brokers: pass --brokers"),
    (["--brokers", "k:9092", "--max-users", "0"], "--max-users '0'"),
    (["--brokers", "k:9092", "--page-history", "-1"], "--page-history '-1'"),
    (["--brokers", "k:9092", "--host", "a b"], "--host 'a b': not a host name"),
    (["--brokers", "k:9092", "--format", "avro"], "--format 'avro': unknown format"),
])  # fmt: skip
def test_bad_options_say_what_to_fix(argv, expected):
    with pytest.raises(CommandError, match=expected.replace("(", r"\(")):
        settings(*argv)


TOKEN = "a-token-of-32-characters-0123456"


def test_the_token_comes_from_a_file_or_the_environment_and_is_never_shown(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert settings("--brokers", "k:9092", "--token-file", str(token_file)).token == TOKEN
    from_environment = settings("--brokers", "k:9092", env={"INTENTSTREAM_TOKEN": TOKEN})
    assert from_environment.token == TOKEN and TOKEN not in repr(from_environment)
    assert settings("--brokers", "k:9092").token is None
    refusals = [
        ((), {"INTENTSTREAM_TOKEN": "short-secret"}, "the token in INTENTSTREAM_TOKEN must be at least 16 printable"),
        ((), {"INTENTSTREAM_TOKEN": "with space 0123456789"}, "without spaces"),
        (("--token-file", str(token_file)), {"INTENTSTREAM_TOKEN": TOKEN}, "both --token-file and INTENTSTREAM_TOKEN"),
        (("--token-file", str(tmp_path / "none")), {}, f"cannot read the token from --token-file {tmp_path / 'none'}"),
    ]  # fmt: skip
    for argv, env, message in refusals:
        with pytest.raises(CommandError, match=message) as refused:
            settings("--brokers", "k:9092", *argv, env=env)
        assert "short-secret" not in str(refused.value) and "0123456789" not in str(refused.value)


def test_tls_files_are_loaded_before_serving(tmp_path):
    certificates = make_certificates(tmp_path)
    chosen = settings("--brokers", "k:9092", "--tls-cert", str(certificates.server), "--tls-key",
                      str(certificates.server_key), env={"INTENTSTREAM_TLS_CLIENT_CA": str(certificates.ca)})  # fmt: skip
    assert (chosen.tls_cert, chosen.tls_key, chosen.tls_client_ca) == (
        certificates.server, certificates.server_key, certificates.ca)  # fmt: skip
    refusals = [
        (["--tls-key", str(certificates.server_key)], "--tls-key needs --tls-cert"),
        (["--tls-client-ca", str(certificates.ca)], "--tls-client-ca needs --tls-cert"),
        (["--tls-cert", str(tmp_path / "none.pem")], "No such file or directory"),
        (["--tls-cert", str(certificates.server), "--tls-key", str(certificates.client_key)], "KEY_VALUES_MISMATCH"),
        (["--tls-cert", str(certificates.server), "--tls-key", str(certificates.server_key), "--tls-client-ca",
          str(tmp_path / "server.ext")], "cannot read client CA certificates from --tls-client-ca"),
    ]  # fmt: skip
    for argv, message in refusals:
        with pytest.raises(CommandError, match=message):
            settings("--brokers", "k:9092", *argv)
