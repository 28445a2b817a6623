"""Certificates for the lookup service's TLS tests, made with the openssl command line: a CA, a
server certificate for 127.0.0.1 and a client certificate, both signed by the CA, and a client
certificate signed by another CA."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

NEW_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server: Path
    server_key: Path
    client: Path
    client_key: Path
    stranger: Path  # a client certificate from another CA
    stranger_key: Path


def make_certificates(directory: Path) -> Certificates:
    assert shutil.which("openssl"), "the TLS tests need the openssl command (Debian's openssl package)"

    def openssl(*arguments: str) -> None:
        subprocess.run(["openssl", *arguments], cwd=directory, check=True, capture_output=True)

    def signed(name: str, ca: str, extension: str) -> None:
        (directory / f"{name}.ext").write_text(extension + "\n")
        openssl("req", *NEW_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext")  # fmt: skip

    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", *NEW_KEY, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "1", "-subj", f"/CN={ca}")
    signed("server", "ca", "subjectAltName=IP:127.0.0.1")
    signed("client", "ca", "extendedKeyUsage=clientAuth")
    signed("stranger", "other-ca", "extendedKeyUsage=clientAuth")
    return Certificates(*(directory / name for name in ("ca.pem", "server.pem", "server.key", "client.pem",
                                                       "client.key", "stranger.pem", "stranger.key")))  # fmt: skip
