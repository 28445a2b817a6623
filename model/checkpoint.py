"""A checkpoint is a directory: config.json, vocab.json and model.safetensors. Loading never unpickles."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.config import IntentRecConfig
from model.errors import CheckpointError  # noqa: F401 - raised here, and importable from here
from model.intentrec import IntentRec
from model.vocab import FIRST_REAL, Vocabularies

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
WEIGHTS_FILE = "model.safetensors"


def save_checkpoint(directory: Path, model: IntentRec, vocab: Vocabularies, metadata: dict) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model": model.config.to_dict(), **metadata}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    vocab.save(directory / VOCAB_FILE)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))


def load_checkpoint(directory: Path, new_title_columns: int | None = None) -> tuple[IntentRec, Vocabularies, dict]:
    """Returns (model in eval mode, vocabularies, config.json contents). `new_title_columns`, when
    given, replaces the config's (a serving choice: those columns have no weights)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(
            f"model directory {directory} does not exist; train one with `intentstream train LOG --out DIR`"
        )
    for name in (CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory} is not a model directory: {name} is missing")
    try:
        meta = json.loads((directory / CONFIG_FILE).read_text())
        config = IntentRecConfig.from_dict(meta["model"])
        if new_title_columns is not None:
            config = replace(config, new_title_columns=new_title_columns)
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{directory / CONFIG_FILE} is not a valid model config: {error}") from None
    try:
        vocab = Vocabularies.load(directory / VOCAB_FILE)
    except ValueError as error:
        raise CheckpointError(f"{directory / VOCAB_FILE} is not valid: {error}") from None
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{directory / WEIGHTS_FILE} is not a readable safetensors file: {error}") from None
    model = IntentRec(config)
    mismatch = weights_mismatch(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(f"{directory / WEIGHTS_FILE} does not match {CONFIG_FILE}: {mismatch}")
    model.load_state_dict(state)
    check_sizes(config, vocab, directory)
    model.eval()
    return model, vocab, meta


def most_played(meta: dict, n_items: int, directory: Path) -> list[int]:
    """config.json's "most_played": the training's most played items (their indices, most played
    first), which retrieval always adds to an index's candidates (model.serving.retrieval); none in
    a checkpoint saved before it was recorded."""
    items = meta.get("most_played", [])
    if not isinstance(items, list) or not all(isinstance(i, int) and FIRST_REAL <= i < n_items for i in items):
        raise CheckpointError(f"{directory / CONFIG_FILE}: most_played must be a list of item indices from "
                              f"{FIRST_REAL} to {n_items - 1}; train the model again")  # fmt: skip
    return items


def weights_mismatch(expected: dict, found: dict) -> str | None:
    """What keeps weights from fitting a model, naming the first tensor concerned; None if they fit."""
    missing = sorted(set(expected) - set(found))
    if missing:
        return f"tensor {missing[0]} is missing ({len(missing)} missing in all)"
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        return f"tensor {unexpected[0]} is not part of this model ({len(unexpected)} such in all)"
    for name in sorted(expected):
        if tuple(found[name].shape) != tuple(expected[name].shape):
            return (f"tensor {name} has shape {tuple(found[name].shape)} but the config gives "
                    f"{tuple(expected[name].shape)}")
    return None


def check_sizes(config: IntentRecConfig, vocab: Vocabularies, directory: Path) -> None:
    pairs = {
        "items": (config.n_items, vocab.items),
        "actions": (config.n_actions, vocab.actions),
        "kinds": (config.n_kinds, vocab.kinds),
        "release": (config.n_release_buckets, vocab.release),
        "devices": (config.n_devices, vocab.devices),
        "genres": (config.n_genres, vocab.genres),
    }
    for name, (size, vocabulary) in pairs.items():
        if size != len(vocabulary):
            raise CheckpointError(
                f"{directory}: vocab.json has {len(vocabulary)} {name} but the model expects {size}"
            )


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
