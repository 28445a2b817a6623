"""Id <-> index maps for every categorical feature. Index 0 pads, index 1 stands for anything unseen."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from schemas import CatalogueEntry, PlayEvent

PAD = 0
UNKNOWN = 1
FIRST_REAL = 2

# Time since release, as the intent task "release" and a feature. Upper bounds in days.
RELEASE_BUCKETS = (("new", 30), ("recent", 365), ("catalog", 5 * 365), ("classic", None))


def release_bucket(ts_ms: int, release_ts_ms: int | None) -> str | None:
    if release_ts_ms is None:
        return None
    age_days = (ts_ms - release_ts_ms) / 86_400_000
    for name, upper in RELEASE_BUCKETS:
        if upper is None or age_days <= upper:
            return name
    raise AssertionError("the last bucket has no upper bound")


class Vocabulary:
    def __init__(self, tokens: Iterable[str]):
        self.tokens: list[str] = list(tokens)
        self.index = {token: i + FIRST_REAL for i, token in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("vocabulary tokens must be unique")

    def __len__(self) -> int:
        """Size including the padding and unknown indices."""
        return len(self.tokens) + FIRST_REAL

    def lookup(self, token: str | None) -> int:
        return self.index.get(token, UNKNOWN) if token is not None else UNKNOWN

    def token(self, index: int) -> str:
        if index < FIRST_REAL:
            return "<pad>" if index == PAD else "<unknown>"
        return self.tokens[index - FIRST_REAL]


@dataclass
class Vocabularies:
    items: Vocabulary
    actions: Vocabulary
    kinds: Vocabulary
    release: Vocabulary
    devices: Vocabulary
    genres: Vocabulary

    @classmethod
    def fit(cls, events: Iterable[PlayEvent], min_item_count: int = 1,
            catalogue: Iterable[CatalogueEntry] = ()) -> "Vocabularies":  # fmt: skip
        """Learn the vocabularies of a training log; items seen fewer than `min_item_count` times
        share the unknown index. Every title of a `catalogue` (what a shop offers, played or not)
        gets an index too."""
        items, actions, devices, genres = Counter(), Counter(), Counter(), Counter()
        for e in events:
            items[e.item_id] += 1
            actions[e.action] += 1
            if e.device is not None:
                devices[e.device] += 1
            genres.update(e.genres)
        listed = set()
        for entry in catalogue:
            listed.add(entry.item_id)
            genres.update(entry.genres)
        return cls(
            items=Vocabulary(sorted({i for i, n in items.items() if n >= min_item_count} | listed)),
            actions=Vocabulary(sorted(actions)),
            kinds=Vocabulary(("movie", "show")),
            release=Vocabulary(name for name, _ in RELEASE_BUCKETS),
            devices=Vocabulary(sorted(devices)),
            genres=Vocabulary(sorted(genres)),
        )

    def to_json(self) -> dict:
        return {name: vocab.tokens for name, vocab in self._named()}

    @classmethod
    def from_json(cls, raw: dict) -> "Vocabularies":
        expected = {"items", "actions", "kinds", "release", "devices", "genres"}
        if not isinstance(raw, dict) or set(raw) != expected:
            got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise ValueError(f"vocab.json must have exactly the keys {sorted(expected)}, got {got}")
        for name, tokens in raw.items():
            if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                raise ValueError(f"vocab.json: {name!r} must be a list of strings")
        return cls(**{name: Vocabulary(tokens) for name, tokens in raw.items()})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> "Vocabularies":
        return cls.from_json(json.loads(path.read_text()))

    def _named(self):
        return (
            ("items", self.items),
            ("actions", self.actions),
            ("kinds", self.kinds),
            ("release", self.release),
            ("devices", self.devices),
            ("genres", self.genres),
        )
