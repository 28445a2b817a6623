"""Every backend scores like eager PyTorch, within the tolerance stated in model.serving.backends."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import shutil

import numpy as np
import pytest
import torch
from tests.model.serving.test_new_titles import play, register
from tests.model.test_intentrec import random_history, random_model, tiny_config, tiny_vocab

from model.serving.backends import BackendError, check_backend_spec, fingerprint, load_backend
from model.checkpoint import save_checkpoint
from model.serving.backends import EagerBackend
from model.serving.incremental import IncrementalScorer
from model.intentrec import IntentRec
from model.serving.scorer import Scorer
from stream.cli import main

HAS_TENSORRT = importlib.util.find_spec("torch_tensorrt") is not None
NEEDS_TENSORRT = "the tensorrt backend needs torch-tensorrt (pip install 'intentstream[gpu]') and an NVIDIA GPU"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("model")
    save_checkpoint(directory, random_model(tiny_config()), tiny_vocab(), {"name": "tiny", "version": "1"})
    return directory


def compile_through_cli(model_dir, out, backend: str) -> int:
    return main(["compile", str(model_dir), "--backend", backend, "--out", str(out), "--max-batch", "8"])


def stream_of_batches(scorer: Scorer, n_users: int = 12, n_events: int = 24):
    """Micro-batches of every user's next event: a first batch of whole histories, then steps."""
    histories = [random_history(n_events, seed=u) for u in range(n_users)]
    users = [f"u{u}" for u in range(n_users)]
    for n in range(n_events - 6, n_events + 1):
        yield users, [h[:n] for h in histories]


def assert_close_to_eager(backend, scorer: Scorer, atol: float, rtol: float):
    """Also over titles first seen in the stream: two registered, one seen before the batches' events
    and one in their midst; after the second batch, ten more, so that the calls' new-title columns
    grow from 8 to 16 (NewTitleRegistry.width) between batches."""
    compiled = IncrementalScorer(scorer, backend)
    recomputed = IncrementalScorer(scorer, backend, cache_bytes=0)
    seen_at = random_history(20, seed=0)["ts"][[0, 19]]
    plays = [play("new-show", seen_at[0]), play("new-film", seen_at[1], kind="movie", release_ts=seen_at[0])]
    for owner in (scorer, compiled, recomputed):
        register(owner, plays)
    more = [play(f"trending-{n}", seen_at[1] - n) for n in range(10)]  # within the week before the newest play
    new_film, widths = [], []
    for batch, (users, histories) in enumerate(stream_of_batches(scorer)):  # 12 users: more than max_batch (8)
        if batch == 2:
            for owner in (scorer, compiled, recomputed):
                register(owner, more)
        expected = scorer.predict(histories)
        widths.append(expected.item_scores.shape[1] - scorer.config.n_items - scorer.config.unknown_slots)
        for incremental in (compiled, recomputed):
            got = incremental.predict_users(users, histories)
            np.testing.assert_allclose(got.item_scores, expected.item_scores, atol=atol, rtol=rtol)
            np.testing.assert_allclose(got.intent_embedding, expected.intent_embedding, atol=atol, rtol=rtol)
            for task, probs in expected.intent_probs.items():
                np.testing.assert_allclose(got.intent_probs[task], probs, atol=atol, rtol=rtol)
        new_film.extend(expected.item_scores[:, scorer.config.n_items + scorer.config.unknown_slots + 1])
    assert min(new_film) == 0 < max(new_film)  # ranked where seen by then, and only there
    assert widths == [8, 8] + [16] * 5
    assert compiled.scored_from_cache == 6 * 12 and recomputed.scored_from_cache == 0


def test_specs_are_checked_before_anything_loads():
    assert check_backend_spec("aoti:models/v3.aoti") == "aoti:models/v3.aoti"
    assert check_backend_spec("auto") == "auto"
    for bad in ("onnx", "aoti", "tensorrt:", "eagre", "auto:x"):
        with pytest.raises(ValueError, match="expected auto, eager, eager:cuda, aoti:PATH or tensorrt:PATH"):
            check_backend_spec(bad)


def test_eager_backend_and_its_refusals(model_dir, tmp_path):
    scorer = Scorer.load(model_dir)
    assert isinstance(load_backend("eager", scorer.model), EagerBackend)
    # auto without an artifact beside the model (or without a directory to look in): eager.
    assert isinstance(load_backend("auto", scorer.model, model_dir), EagerBackend)
    assert isinstance(load_backend("auto", scorer.model), EagerBackend)
    assert_close_to_eager(load_backend("eager", scorer.model), scorer, atol=1e-6, rtol=1e-4)
    with pytest.raises(BackendError, match="unknown backend"):
        load_backend("onnx", scorer.model)
    with pytest.raises(BackendError, match="is not a compiled artifact"):
        load_backend(f"aoti:{tmp_path}", scorer.model)
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="no CUDA GPU"):
            load_backend("eager:cuda", scorer.model)


def artifact_beside_model(model_dir, tmp_path, graphs: dict[str, bytes], **manifest_changes):
    """A copy of the model with an aoti/ directory beside it whose manifest fits the model and this
    torch, holding `graphs` (file name -> bytes) and recording their SHA-256, changed by
    `manifest_changes` (a value of None removes the field)."""
    own_dir = tmp_path / "model"
    shutil.copytree(model_dir, own_dir)
    artifact = own_dir / "aoti"
    artifact.mkdir(mode=0o755)
    for name, content in graphs.items():
        (artifact / name).write_bytes(content)
    manifest = {"backend": "aoti", "device": "cpu", "max_batch": 8, "max_rows": 16,
                "model": fingerprint(Scorer.load(model_dir).model), "torch": torch.__version__,
                "files": {name: hashlib.sha256(content).hexdigest() for name, content in graphs.items()}}  # fmt: skip
    manifest.update(manifest_changes)
    (artifact / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if v is not None}))
    for path in (own_dir, artifact, *artifact.iterdir()):
        path.chmod(path.stat().st_mode & ~0o022)  # whatever the umask: only the owner writes
    return own_dir, artifact


NOT_A_PACKAGE = {"window.pt2": b"not a zip archive", "step.pt2": b"not one either"}  # malformed .pt2 files


@pytest.mark.parametrize("graphs, manifest_changes, reason", [
    (NOT_A_PACKAGE, {"files": None}, "compiled by an older intentstream, whose manifest.json records no checksums"),
    (NOT_A_PACKAGE, {"files": {"window.pt2": hashlib.sha256(NOT_A_PACKAGE["window.pt2"]).hexdigest(),
                                "step.pt2": "0" * 64}}, "step.pt2 is not the file that was compiled (its SHA-256"),
    (NOT_A_PACKAGE, {"max_batch": "eight", "device": None}, "manifest.json is malformed (device, max_batch: missing"),
    (NOT_A_PACKAGE, {"device": "abacus"}, "manifest.json is malformed (device: missing or not understood)"),
    (NOT_A_PACKAGE, {}, "could not be loaded (Failed to initialize zip archive"),
])  # fmt: skip
def test_auto_runs_eager_instead_of_an_artifact_it_cannot_trust_or_read(model_dir, tmp_path, caplog, graphs,
                                                                          manifest_changes, reason):  # fmt: skip
    own_dir, artifact = artifact_beside_model(model_dir, tmp_path, graphs, **manifest_changes)
    scorer = Scorer.load(own_dir)
    with caplog.at_level(logging.INFO, logger="model.serving.backends"):
        assert isinstance(load_backend("auto", scorer.model, own_dir), EagerBackend)
    ours = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "model.serving.backends"]
    assert len(ours) == 1 and ours[0][0] == logging.WARNING, ours
    assert reason in ours[0][1] and ours[0][1].endswith("running eager PyTorch instead")
    with pytest.raises(BackendError, match=re.escape(reason)) as refused:  # named, the same stops `run`
        load_backend(f"aoti:{artifact}", scorer.model)
    assert "\n" not in str(refused.value)


def test_a_manifest_that_is_not_json_is_passed_over_by_auto(model_dir, tmp_path, caplog):
    own_dir, artifact = artifact_beside_model(model_dir, tmp_path, NOT_A_PACKAGE)
    for broken in ("{not json", "[1, 2]"):
        (artifact / "manifest.json").write_text(broken)
        with caplog.at_level(logging.WARNING, logger="model.serving.backends"):
            assert isinstance(load_backend("auto", Scorer.load(own_dir).model, own_dir), EagerBackend)
    assert "manifest.json cannot be read (Expecting property name" in caplog.text
    assert "manifest.json is malformed (not a JSON object)" in caplog.text


@pytest.mark.parametrize("writable", ["model", "model/aoti", "model/aoti/manifest.json", "model/aoti/step.pt2"])
@pytest.mark.parametrize("bits", [0o020, 0o002], ids=["group", "others"])
def test_an_artifact_others_may_write_is_refused(model_dir, tmp_path, caplog, writable, bits):
    own_dir, artifact = artifact_beside_model(model_dir, tmp_path, NOT_A_PACKAGE)
    path = tmp_path / writable
    path.chmod(path.stat().st_mode | bits)
    with caplog.at_level(logging.WARNING, logger="model.serving.backends"):
        assert isinstance(load_backend("auto", Scorer.load(own_dir).model, own_dir), EagerBackend)
    assert f"{path} is writable by group or others" in caplog.text and f"`chmod go-w {path}`" in caplog.text
    if writable != "model":  # named explicitly, the artifact's own directory and files are checked
        with pytest.raises(BackendError, match="is writable by group or others"):
            load_backend(f"aoti:{artifact}", Scorer.load(own_dir).model)


@pytest.mark.slow  # compiling both graphs with AOTInductor takes 1-2 minutes on two shared cores
def test_aoti_artifact_matches_eager_and_refuses_another_model(model_dir, tmp_path, capsys, caplog):
    own_dir = tmp_path / "model"
    shutil.copytree(model_dir, own_dir)
    assert main(["compile", str(own_dir), "--max-batch", "8"]) == 0  # aoti, beside the model
    out = own_dir / "aoti"
    assert f"run it with --backend aoti:{out} (or the default, auto)" in capsys.readouterr().out
    scorer = Scorer.load(own_dir)
    backend = load_backend(f"aoti:{out}", scorer.model)
    assert (backend.name, backend.device.type, backend.max_batch) == ("aoti", "cpu", 8)
    assert_close_to_eager(backend, scorer, atol=1e-6, rtol=1e-4)
    assert load_backend("auto", scorer.model, own_dir).name == "aoti"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == {name: hashlib.sha256((out / name).read_bytes()).hexdigest()
                                 for name in ("window.pt2", "step.pt2")}  # fmt: skip
    assert all(not path.stat().st_mode & 0o022 for path in (out, *out.iterdir()))

    # The real artifact, changed after compiling or made writable by others: auto runs eager instead.
    compiled = (out / "step.pt2").read_bytes()
    (out / "step.pt2").write_bytes(compiled[:-1] + bytes([compiled[-1] ^ 1]))
    with caplog.at_level(logging.WARNING, logger="model.serving.backends"):
        assert isinstance(load_backend("auto", scorer.model, own_dir), EagerBackend)
    assert "step.pt2 is not the file that was compiled (its SHA-256 differs" in caplog.text
    (out / "step.pt2").write_bytes(compiled)
    out.chmod(0o775)
    with pytest.raises(BackendError, match="is writable by group or others"):
        load_backend(f"aoti:{out}", scorer.model)
    out.chmod(0o755)
    assert load_backend("auto", scorer.model, own_dir).name == "aoti"

    torch.manual_seed(1)
    another = IntentRec(tiny_config())
    with pytest.raises(BackendError, match="compiled from another model"):
        load_backend(f"aoti:{out}", another)
    with pytest.raises(BackendError, match="holds an artifact for aoti, not tensorrt"):
        load_backend(f"tensorrt:{out}", scorer.model)
    # auto passes over an artifact that does not fit, and says so.
    with caplog.at_level(logging.WARNING, logger="model.serving.backends"):
        assert isinstance(load_backend("auto", another, own_dir), EagerBackend)
    assert "compiled from another model; compile it again" in caplog.text


@pytest.mark.skipif(HAS_TENSORRT, reason="torch_tensorrt is installed: the TensorRT test below runs instead")
def test_tensorrt_says_what_it_needs_where_it_is_missing(model_dir, tmp_path, capsys):
    assert compile_through_cli(model_dir, tmp_path / "tiny.trt", "tensorrt") == 2
    assert "needs torch-tensorrt and an NVIDIA GPU" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_TENSORRT, reason=NEEDS_TENSORRT)
def test_tensorrt_artifact_matches_eager_in_fp16(model_dir, tmp_path):
    out = tmp_path / "tiny.trt"
    assert compile_through_cli(model_dir, out, "tensorrt") == 0
    scorer = Scorer.load(model_dir)
    backend = load_backend(f"tensorrt:{out}", scorer.model)
    assert (backend.name, backend.device.type) == ("tensorrt", "cuda")
    assert_close_to_eager(backend, scorer, atol=2e-2, rtol=0)
