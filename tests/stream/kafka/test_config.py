"""Kafka client settings: the properties file, the environment, and what is never logged."""
from __future__ import annotations

import pytest

from stream.kafka.config import KafkaConfigError, load_kafka_config, parse_properties, redacted


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


def test_redacted_masks_settings_it_does_not_know_so_a_mistyped_secret_stays_hidden():
    shown = redacted({"sasl.passwd": "hunter2", "sasl.pasword": "hunter3", "my.custom.thing": "x",
                      "message.timeout.ms": "5000", "queue.buffering.max.kbytes": "1024"})  # fmt: skip
    assert shown == {"sasl.passwd": "***", "sasl.pasword": "***", "my.custom.thing": "***",
                     "message.timeout.ms": "5000", "queue.buffering.max.kbytes": "1024"}  # fmt: skip


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
