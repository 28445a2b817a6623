"""`intentstream run`'s options as the tests give them, and a model to refuse a recovery directory to."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from stream.cli import main
from stream.cli.run import add_run_arguments
from stream.errors import CommandError
from stream.service.options import settings_from_args
from stream.settings import StreamSettings


REQUIRED = ["--brokers", "localhost:9092", "--model", "/models/m"]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="intentstream run")
    add_run_arguments(parser)
    return parser.parse_args(list(argv))


def settings(*argv: str, env: dict[str, str] | None = None) -> StreamSettings:
    return settings_from_args(parse(*REQUIRED, *argv), env or {})


def settings_error(*argv: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(CommandError) as raised:
        settings(*argv, env=env)
    return str(raised.value)


def run(*argv: str) -> int:
    """`intentstream run ARGV` as the shell runs it: its exit status."""
    return main(["run", *argv])


def swapped_vocabulary_copy(model_dir: Path, destination: Path) -> Path:
    """The same model with two items' vocabulary indices swapped: it loads, but reads rows differently."""
    shutil.copytree(model_dir, destination)
    vocab = json.loads((destination / "vocab.json").read_text())
    vocab["items"][0], vocab["items"][1] = vocab["items"][1], vocab["items"][0]
    (destination / "vocab.json").write_text(json.dumps(vocab))
    return destination
