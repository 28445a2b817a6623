"""The world the stream benches run on: the synthetic world of seed 0 (400 titles, 30 days) and
IntentRec's default architecture trained for one epoch on 400 of its users (or the demo's small model,
8 epochs), kept in the demo's model cache, so that every stream bench of a machine scores with the
same model."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from stream.demo import DemoOptions, demo_world, train_or_reuse
from stream.settings import SMALL_MODEL


class BenchWorld:
    def __init__(self, stream_users: int = 600, torch_threads: int = 1, small_model: bool = False):
        self.small_model = small_model
        self.options = DemoOptions(seed=0, train_users=400, stream_users=stream_users, titles=400, days=30,
                                   epochs=8 if small_model else 1, torch_threads=torch_threads)  # fmt: skip
        self.training, self.streamed = demo_world(self.options)

    def model(self, say: Callable[[str], None]) -> Path:
        """The cached model's directory, trained first if the cache has none."""
        if self.small_model:
            return train_or_reuse(self.options, self.training, say, model_overrides=SMALL_MODEL, progress=False)
        return train_or_reuse(self.options, self.training, say, model_overrides={}, variant="default", progress=False)
