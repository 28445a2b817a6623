"""`intentstream serve`'s settings: every option from the command line, else INTENTSTREAM_<OPTION>,
else stream.settings.LookupSettings' default, as for `run` (stream.service.options); Kafka client
settings the same way too. A value that cannot be used raises CommandError (exit status 2).

Access: the bearer token comes from INTENTSTREAM_TOKEN or from a file (--token-file), never from
the command line, where every user of the machine can read it; no message shows it. TLS files are
loaded here once, so that a wrong path, a key that does not match its certificate or a CA file
that holds no certificate stops the service before it serves."""
from __future__ import annotations

import argparse
import ssl
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from stream import parsing
from stream.errors import CommandError
from stream.lookup.table import ON_FULL
from stream.service.options import default_of, env_name, kafka_from_args, resolve_option
from stream.settings import LookupSettings

T = TypeVar("T")

MIN_TOKEN_CHARS = 16


def lookup_settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> LookupSettings:
    def option(dest: str, parse: Callable[[str], T], field: str | None = None) -> T:
        return resolve_option(args, environ, dest, parse, default_of(field or dest, LookupSettings))

    brokers, kafka_config = kafka_from_args(args, environ)
    settings = LookupSettings(
        brokers=brokers,
        topic=option("topic", parsing.topic),
        format=option("format", parsing.wire_format),
        host=option("host", parsing.host),
        port=option("port", parsing.port),
        max_users=option("max_users", parsing.positive_int),
        on_full=option("on_full", parsing.one_of(*ON_FULL)),
        page_history=option("page_history", parsing.non_negative_int),
        max_batch_get=option("max_batch_get", parsing.positive_int),
        connect_timeout_s=option("connect_timeout", parsing.positive_duration, "connect_timeout_s"),
        max_broker_outage_s=option("max_broker_outage", parsing.positive_duration, "max_broker_outage_s"),
        kafka_config=kafka_config,
        token=_token(resolve_option(args, environ, "token_file", Path, None), environ),
        tls_cert=option("tls_cert", Path),
        tls_key=option("tls_key", Path),
        tls_client_ca=option("tls_client_ca", Path),
    )
    _check_tls(settings)
    return settings


def _token(token_file: Path | None, environ: Mapping[str, str]) -> str | None:
    """The bearer token, from the file or the environment; the messages never show it."""
    in_environment = environ.get(env_name("token"))
    if token_file is not None and in_environment is not None:
        raise CommandError(f"both --token-file and {env_name('token')} give a token: keep one")
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as error:
            raise CommandError(f"cannot read the token from --token-file {token_file}: "
                               f"{getattr(error, 'strerror', None) or error}") from None  # fmt: skip
        source = f"--token-file {token_file}"
    elif in_environment is not None:
        token, source = in_environment.strip(), env_name("token")
    else:
        return None
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable() or " " in token:
        raise CommandError(f"the token in {source} must be at least {MIN_TOKEN_CHARS} printable ASCII characters "
                           "without spaces (e.g. `openssl rand -hex 32`)")  # fmt: skip
    return token


def _check_tls(settings: LookupSettings) -> None:
    if settings.tls_cert is None:
        for flag, given in (("--tls-key", settings.tls_key), ("--tls-client-ca", settings.tls_client_ca)):
            if given is not None:
                raise CommandError(f"{flag} needs --tls-cert (INTENTSTREAM_TLS_CERT): the service's own certificate")
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password callback that gives none: an encrypted key is refused instead of asked for on a terminal.
        context.load_cert_chain(settings.tls_cert, settings.tls_key, password=lambda: b"")
    except (OSError, ssl.SSLError) as error:
        raise CommandError(f"cannot serve HTTPS with --tls-cert {settings.tls_cert}"
                           f"{f' and --tls-key {settings.tls_key}' if settings.tls_key else ''}: {_reason(error)}; "
                           "give a PEM certificate chain and its unencrypted PEM key") from None  # fmt: skip
    if settings.tls_client_ca is not None:
        try:
            context.load_verify_locations(settings.tls_client_ca)
        except (OSError, ssl.SSLError) as error:
            raise CommandError(f"cannot read client CA certificates from --tls-client-ca {settings.tls_client_ca}: "
                               f"{_reason(error)}; give a PEM file of CA certificates") from None  # fmt: skip


def _reason(error: OSError | ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLError):
        return error.reason or "no PEM certificate and key found there"
    return error.strerror or str(error)
