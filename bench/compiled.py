"""The compiled model the benches serve with: `--backend auto` (the default of `intentstream run`)
runs the AOTInductor artifact beside the model, which a deployment compiles after training
(docker-compose.yml's `train`); the benches compile it the same way, once, where none that fits is
there."""
from __future__ import annotations

import time
from pathlib import Path


def compile_beside(model_dir: Path, max_batch: int, say) -> str:
    """Compiles `model_dir`'s serving graphs into the artifact beside it unless one that fits this
    model and torch is there; says which, for a report's settings line."""
    from model.serving.backends import BackendError, artifact_beside, compile_artifact, load_artifact
    from model.serving.scorer import Scorer

    model = Scorer.load(model_dir).model
    out = artifact_beside(model_dir, "aoti")
    try:
        load_artifact(out, model, expected="aoti")
        return f"auto (AOTInductor, {out.name}/ beside the model, compiled before this run)"
    except BackendError:
        say(f"compiling the model with AOTInductor into {out} ...")
        started = time.monotonic()
        compile_artifact(model, "aoti", out, max_batch=max_batch)
        return f"auto (AOTInductor, {out.name}/ beside the model, compiled by this run in {time.monotonic() - started:.0f} s)"
