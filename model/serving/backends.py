"""Runtime backends: what runs the two graphs of incremental inference (model.serving.graphs).

A backend is named by a spec string (`intentstream run --backend`, `load_backend`):

    auto            the artifact compiled beside the model (MODEL_DIR/tensorrt where a GPU is
                    here, else MODEL_DIR/aoti: what `intentstream compile MODEL_DIR` writes) if
                    it fits this model and torch, else eager on the CPU (the default)
    eager           eager PyTorch on the CPU
    eager:cuda      eager PyTorch on a GPU
    aoti:PATH       an AOTInductor artifact (torch.export + AOTInductor, compiled C++/CUDA);
                    runs on the device it was compiled for
    tensorrt:PATH   a TensorRT artifact (torch_tensorrt, fp16); needs torch-tensorrt and an NVIDIA GPU

An artifact is a directory written by `compile_artifact` (`intentstream compile`): manifest.json
(backend, device, batch and row limits, a fingerprint of the weights, so that an artifact is never
run for another checkpoint, and the SHA-256 of each graph file) and the two compiled graphs, window
and step.

An artifact is code: an AOTInductor .pt2 holds a shared library that loading runs in this process,
and torch's loaders may unpickle what a package holds. So one is loaded only if its files are the
ones compiled (their SHA-256 as the manifest records them) and if no one but its owner may change
it: an artifact directory or file writable by group or others (and, for `auto`, such a model
directory) is refused. The checksums catch an artifact changed or half copied since it was
compiled; whoever may write the directory could rewrite the manifest too, which is why the
permissions are checked. `auto` runs eager PyTorch, with one log line saying why, instead of an
artifact it cannot use, malformed ones included; a named one (`aoti:PATH`) raises BackendError. Graphs take plain
tensors and return tuples. Batch size, window length and the number of new-title columns are dynamic
dimensions (min/opt/max for TensorRT), so one artifact serves every micro-batch; window lengths and
new-title columns come in power-of-two buckets (model.serving.scorer.padded_length,
NewTitleRegistry.width). Compiled artifacts embed the weights.

Tolerances against eager, asserted by tests/test_backends.py: AOTInductor (float32) within 1e-4
relative, 1e-6 absolute, on every output; TensorRT (fp16) within 2e-2 absolute on probabilities
(asserted only where torch_tensorrt is installed; not yet run: no GPU so far).
"""
from __future__ import annotations

import hashlib
import json
import logging
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from model.config import IntentRecConfig
from model.features import ROW_DTYPE
from model.inputs import MODEL_INPUTS
from model.intentrec import IntentRec
from model.serving.graphs import NEW_TITLE_TABLES, StepGraph, WindowGraph
from model.serving.host_inputs import step_batch, window_batch
from model.serving.kv_cache import Ring, keys_values_shape
from model.serving.new_titles import MIN_WIDTH, NewTitleRegistry

log = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "aoti", "tensorrt")
MANIFEST = "manifest.json"
GRAPH_FILES = {"aoti": ("window.pt2", "step.pt2"), "tensorrt": ("window.ep", "step.ep")}
DEFAULT_MAX_BATCH = 1024


class Backend(Protocol):
    """Runs the two graphs (model.serving.backends has the compiled ones). Inputs are on `device`; outputs
    are a tuple, as split_outputs reads it. `max_batch`: users per call, None for no limit."""

    name: str
    device: torch.device
    max_batch: int | None

    def window(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]: ...

    def step(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]: ...


class EagerBackend:
    """The graphs in eager PyTorch, on the CPU (sharing the scorer's model) or on a GPU (a copy)."""

    name = "eager"
    max_batch = None

    def __init__(self, model: IntentRec, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        if self.device.type != "cpu":
            on_device = IntentRec(model.config)
            on_device.load_state_dict(model.state_dict())
            model = on_device.to(self.device).eval()
        self.window_graph = WindowGraph(model).eval()
        self.step_graph = StepGraph(model).eval()

    @torch.inference_mode()
    def window(self, *inputs):
        return self.window_graph(*inputs)

    @torch.inference_mode()
    def step(self, *inputs):
        return self.step_graph(*inputs)


class BackendError(RuntimeError):
    """A backend that cannot be used here, or an artifact that does not fit; the message says why."""


def load_backend(spec: str, model: IntentRec, model_dir: Path | None = None) -> Backend:
    """The backend a spec names (see the module docstring), for `model`'s weights (read from
    `model_dir`, where `auto` looks for an artifact; None: nowhere to look)."""
    kind, _, argument = spec.partition(":")
    if kind == "auto" and not argument:
        return compiled_beside(model, model_dir) or EagerBackend(model)
    if kind == "eager":
        device = argument or "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"backend {spec!r}: no CUDA GPU is available here")
        return EagerBackend(model, device)
    if kind in GRAPH_FILES:
        if not argument:
            raise BackendError(f"backend {spec!r}: name the artifact directory, e.g. {kind}:models/v3.{kind}")
        return load_artifact(Path(argument), model, expected=kind)
    raise BackendError(f"unknown backend {spec!r}; choose auto, eager, eager:cuda, aoti:PATH or tensorrt:PATH")


def check_backend_spec(spec: str) -> str:
    """`spec` if it is well formed (for argument parsers); does not load anything."""
    kind, _, argument = spec.partition(":")
    malformed_eager = kind == "eager" and argument not in ("", "cpu") and not argument.startswith("cuda")
    malformed_auto = kind == "auto" and argument
    if kind not in BACKENDS or (kind in GRAPH_FILES and not argument) or malformed_eager or malformed_auto:
        raise ValueError(f"expected auto, eager, eager:cuda, aoti:PATH or tensorrt:PATH, got {spec!r}")
    return spec


def artifact_beside(model_dir: Path, backend: str) -> Path:
    """Where `intentstream compile MODEL_DIR --backend B` writes by default and `auto` looks."""
    return Path(model_dir) / backend


def compiled_beside(model: IntentRec, model_dir: Path | None) -> CompiledBackend | None:
    """The artifact beside the model that runs here (TensorRT where a GPU is here, then
    AOTInductor), or None. One that does not fit (another model, another torch) is passed over
    with a warning that says how to make it fit."""
    if model_dir is None:
        return None
    kinds = ("tensorrt", "aoti") if torch.cuda.is_available() else ("aoti",)
    passed_over = False
    for kind in kinds:
        directory = artifact_beside(model_dir, kind)
        if not (directory / MANIFEST).is_file():
            continue
        try:
            refuse_if_others_may_write(Path(model_dir), "the model directory")
            backend = load_artifact(directory, model, expected=kind)
        except BackendError as error:
            log.warning("backend auto: %s; running eager PyTorch instead", error)
            passed_over = True
            continue
        log.info("backend auto: %s from %s", kind, directory)
        return backend
    if passed_over:
        return None
    log.info("backend auto: eager PyTorch (no compiled artifact beside the model; `intentstream compile %s "
             "--backend aoti` makes one, about 1.3x the events/s on a CPU)", model_dir)
    return None


# --------------------------------------------------------------------------- artifacts


@dataclass(frozen=True)
class Limits:
    """The shapes an artifact accepts: up to max_batch users, windows of 2..max_rows rows."""

    max_batch: int
    max_rows: int


class CompiledBackend:
    """Compiled window and step graphs loaded from an artifact."""

    def __init__(self, name: str, device: torch.device, max_batch: int, window: Callable, step: Callable):
        self.name = name
        self.device = device
        self.max_batch = max_batch
        self._window = window
        self._step = step

    @torch.inference_mode()
    def window(self, *inputs):
        return tuple(self._window(*inputs))

    @torch.inference_mode()
    def step(self, *inputs):
        return tuple(self._step(*inputs))


def fingerprint(model: IntentRec) -> str:
    """Identifies a model's config and weights."""
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def compile_artifact(
    model: IntentRec, backend: str, out: Path, device: str = "cpu", max_batch: int = DEFAULT_MAX_BATCH
) -> dict:
    """Compiles the window and step graphs of `model` with `backend` ("aoti" or "tensorrt") for
    `device` into the directory `out`; returns the manifest written there."""
    if backend not in GRAPH_FILES:
        raise BackendError(f"cannot compile for backend {backend!r}; choose one of {sorted(GRAPH_FILES)}")
    if backend == "tensorrt":
        require_tensorrt()
        device = "cuda"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError(f"compiling for {device}: no CUDA GPU is available here")
    on_device = IntentRec(model.config)
    on_device.load_state_dict(model.state_dict())
    on_device = on_device.to(device).eval()
    limits = Limits(max_batch=max_batch, max_rows=model.config.history_len)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    compile_graph = compile_aoti if backend == "aoti" else compile_tensorrt
    window_file, step_file = GRAPH_FILES[backend]
    new_titles = NewTitleRegistry(model)
    with torch.inference_mode(False), torch.no_grad():
        compile_graph(WindowGraph(on_device), window_shapes(on_device.config, limits, device, new_titles),
                      out / window_file)  # fmt: skip
        compile_graph(StepGraph(on_device), step_shapes(on_device.config, limits, device, new_titles), out / step_file)
    manifest = {
        "backend": backend,
        "device": device,
        "max_batch": max_batch,
        "max_rows": limits.max_rows,
        "model": fingerprint(model),
        "torch": torch.__version__,
        "files": {name: sha256_of(out / name) for name in GRAPH_FILES[backend]},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    for path in (out, out / MANIFEST, *(out / name for name in GRAPH_FILES[backend])):
        path.chmod(path.stat().st_mode & ~(stat.S_IWGRP | stat.S_IWOTH))  # whatever the umask: load_artifact's rule
    return manifest


def load_artifact(directory: Path, model: IntentRec, expected: str | None = None) -> CompiledBackend:
    """The artifact in `directory`, once it is known to be what was compiled for `model` (see the
    module docstring); BackendError, with one line saying why, if it is not."""
    refuse_if_others_may_write(directory, "the artifact directory")
    manifest = read_manifest(directory)
    backend = manifest["backend"]
    if expected is not None and backend != expected:
        raise BackendError(f"{directory} holds an artifact for {backend}, not {expected}")
    if manifest["model"] != fingerprint(model):
        raise BackendError(f"{directory} was compiled from another model; compile it again for this one")
    if manifest["torch"] != torch.__version__:
        raise BackendError(
            f"{directory} was compiled with torch {manifest['torch']}, this is {torch.__version__}: compile it again"
        )
    device = torch.device(manifest["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendError(f"{directory} was compiled for {device}, and no CUDA GPU is available here")
    if "files" not in manifest:
        raise BackendError(f"{directory} was compiled by an older intentstream, whose {MANIFEST} records no "
                           "checksums of its files: compile it again")  # fmt: skip
    for name in GRAPH_FILES[backend]:
        path = directory / name
        refuse_if_others_may_write(path, "the compiled graph")
        if sha256_of(path) != manifest["files"].get(name):
            raise BackendError(f"{path} is not the file that was compiled (its SHA-256 differs from {MANIFEST}'s): "
                               "compile it again")  # fmt: skip
    load = load_aoti if backend == "aoti" else load_tensorrt
    window_file, step_file = GRAPH_FILES[backend]
    try:
        window, step = load(directory / window_file), load(directory / step_file)
    except BackendError:
        raise
    except Exception as error:  # whatever torch's loaders raise for a file they cannot read
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BackendError(f"{directory} could not be loaded ({reason}): compile it again") from None
    return CompiledBackend(backend, device, manifest["max_batch"], window, step)


MANIFEST_FIELDS = {"backend": str, "device": str, "max_batch": int, "max_rows": int, "model": str, "torch": str}


def read_manifest(directory: Path) -> dict:
    """The artifact's manifest, its fields of the expected types; BackendError if it is missing or malformed."""
    path = directory / MANIFEST
    try:
        refuse_if_others_may_write(path, "the manifest")
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackendError(
            f"{directory} is not a compiled artifact ({MANIFEST} is missing); make one with "
            f"`intentstream compile MODEL_DIR --backend aoti --out {directory}`"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BackendError(f"{path} cannot be read ({error}): compile the artifact again") from None
    if not isinstance(manifest, dict):
        raise BackendError(f"{path} is malformed (not a JSON object): compile the artifact again")
    wrong = [name for name, kind in MANIFEST_FIELDS.items() if not isinstance(manifest.get(name), kind)]
    files = manifest.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(digest, str) for digest in files.values()):
        wrong.append("files")
    if not wrong and manifest["backend"] not in GRAPH_FILES:
        wrong.append("backend")
    if not wrong:
        try:
            torch.device(manifest["device"])
        except RuntimeError:
            wrong.append("device")
    if wrong:
        raise BackendError(f"{path} is malformed ({', '.join(wrong)}: missing or not understood): compile the "
                           "artifact again")  # fmt: skip
    return manifest


def refuse_if_others_may_write(path: Path, what: str) -> None:
    """BackendError if `path` is writable by its group or by others: whoever may change a compiled
    artifact runs code in the process that loads it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return  # the caller says what is missing
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise BackendError(f"{what} {path} is writable by group or others (mode {stat.filemode(mode)}), so anyone "
                           f"they include could run code in this process through it: `chmod go-w {path}`")


def sha256_of(path: Path) -> str | None:
    """The file's SHA-256 (hex), or None if there is no such file."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


# --------------------------------------------------------------------------- example inputs and shapes


@dataclass(frozen=True)
class GraphShapes:
    """Example inputs for export, which of their dimensions are dynamic, and the min/opt/max sizes
    of those (TensorRT builds its engine for the opt sizes; opt must differ from min)."""

    example: tuple[torch.Tensor, ...]
    dynamic: tuple[dict[int, torch.export.Dim], ...]
    sizes: dict[str, tuple[int, int, int]]


def example_rows(config: IntentRecConfig, users: int, rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    history = np.zeros((users, rows), dtype=ROW_DTYPE)
    history["item"] = rng.integers(2, config.n_items, (users, rows))
    history["action"] = rng.integers(2, config.n_actions, (users, rows))
    history["kind"] = rng.integers(2, config.n_kinds, (users, rows))
    history["release"] = rng.integers(2, config.n_release_buckets, (users, rows))
    history["device"] = rng.integers(2, config.n_devices, (users, rows))
    history["genres"][..., :2] = rng.integers(2, config.n_genres, (users, rows, 2))
    history["ts"] = config.time_origin_ms + np.cumsum(rng.integers(60_000, 86_400_000, (users, rows)), axis=1)
    history["watch_s"] = rng.uniform(0, 3600, (users, rows))
    return history


def example_ts(histories: list[np.ndarray]) -> np.ndarray:
    return np.array([history["ts"][-1] for history in histories])


def new_title_dims(batch: torch.export.Dim, config: IntentRecConfig) -> tuple[tuple[dict, ...], dict]:
    """The new-title inputs' dynamic dimensions, and the sizes of their number of columns: the
    tables are a row per column, the recent plays a row per query and a column per column, the
    share a row per query. The columns are dynamic (NewTitleRegistry.width grows from MIN_WIDTH to
    the capacity) unless the capacity leaves one width."""
    capacity = config.new_title_columns
    if capacity <= MIN_WIDTH:
        titles, sizes = None, {}
    else:
        titles = torch.export.Dim("new_titles", min=MIN_WIDTH, max=capacity)
        sizes = {"new_titles": (MIN_WIDTH, capacity, capacity)}
    tables = tuple({} if titles is None else {0: titles} for _ in range(NEW_TITLE_TABLES))
    recent_plays = {0: batch} if titles is None else {0: batch, 1: titles}
    return (*tables, recent_plays, {0: batch}), sizes


def as_tensor(array: np.ndarray, device: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def window_shapes(config: IntentRecConfig, limits: Limits, device: str, new_titles: NewTitleRegistry) -> GraphShapes:
    batch, rows = min(2, limits.max_batch), min(8, limits.max_rows)
    histories = list(example_rows(config, batch, rows))
    host = [*window_batch(histories, rows, config).inputs, *new_titles.at(example_ts(histories)).inputs()]
    B = torch.export.Dim("batch", min=1, max=limits.max_batch)
    T = torch.export.Dim("rows", min=2, max=limits.max_rows)
    dynamic = tuple({0: B, 1: T, 2: T} if name.startswith("attend") else {0: B, 1: T} for name in MODEL_INPUTS)
    title_dims, title_sizes = new_title_dims(B, config)
    dynamic += title_dims
    # Opt: half the largest batch, whole windows (what a returning user's rebuild needs), every new-title column.
    sizes = {
        "batch": (1, max(2, limits.max_batch // 2), limits.max_batch),
        "rows": (2, limits.max_rows, limits.max_rows),
        **title_sizes,
    }
    return GraphShapes(tuple(as_tensor(a, device) for a in host), dynamic, sizes)


def step_shapes(config: IntentRecConfig, limits: Limits, device: str, new_titles: NewTitleRegistry) -> GraphShapes:
    batch, window = min(2, limits.max_batch), config.attention_window - 1
    rows = example_rows(config, batch, window + 1)
    slots = np.arange(batch)
    valid = np.ones((batch, window), dtype=bool)
    ring = Ring(slots, slots, rows["item"][:, :-1].astype(np.int32), rows["ts"][:, :-1], valid)
    host = step_batch(rows[:, -1], rows["ts"][:, -2], ring, config).inputs
    keys_values = torch.randn(keys_values_shape(config, batch, window), device=device)
    pointer_keys = torch.randn((batch, window, config.d_model), device=device)
    titles = new_titles.at(rows["ts"][:, -1]).inputs()
    example = (*(as_tensor(a, device) for a in [*host, *titles]), keys_values, pointer_keys)
    B = torch.export.Dim("batch", min=1, max=limits.max_batch)
    title_dims, title_sizes = new_title_dims(B, config)
    dynamic = tuple({0: B} for _ in host) + title_dims + ({2: B}, {0: B})  # keys/values: layer-major
    sizes = {"batch": (1, max(2, limits.max_batch // 2), limits.max_batch), **title_sizes}
    return GraphShapes(example, dynamic, sizes)


# --------------------------------------------------------------------------- AOTInductor


def compile_aoti(graph: torch.nn.Module, shapes: GraphShapes, path: Path) -> None:
    exported = torch.export.export(graph, shapes.example, dynamic_shapes=shapes.dynamic)
    torch._inductor.aoti_compile_and_package(exported, package_path=str(path))


def load_aoti(path: Path) -> Callable:
    return torch._inductor.aoti_load_package(str(path))


# --------------------------------------------------------------------------- TensorRT


def require_tensorrt():
    """torch_tensorrt, or a BackendError saying what is missing."""
    try:
        import torch_tensorrt
    except ImportError as error:
        raise BackendError(
            "the tensorrt backend needs torch-tensorrt and an NVIDIA GPU: install the 'gpu' extra "
            f"(pip install 'intentstream[gpu]') on a CUDA machine ({error})"
        ) from None
    if not torch.cuda.is_available():
        raise BackendError("the tensorrt backend needs an NVIDIA GPU, and no CUDA device is available here")
    return torch_tensorrt


def tensorrt_settings(torch_tensorrt) -> dict:
    """fp16 engines, whatever the installed torch_tensorrt calls that, and attention masks kept as
    they are: newer releases otherwise replace a boolean attention mask by a causal one
    (attn_bias_is_causal), which is wrong for padding, time windows and a step's cache."""
    fields = set(torch_tensorrt.dynamo.CompilationSettings.__dataclass_fields__)
    settings: dict = {"min_block_size": 1}
    if "attn_bias_is_causal" in fields:
        settings["attn_bias_is_causal"] = False
    if "enable_autocast" in fields:  # explicit typing; autocast inserts the fp16 casts
        settings.update(use_explicit_typing=True, enable_autocast=True)
        named = "autocast_low_precision_type"
        settings[named if named in fields else "low_precision_type"] = torch.float16
    else:  # weak typing: the builder may choose fp16 kernels
        settings["enabled_precisions"] = {torch.float16, torch.float32}
        if "use_explicit_typing" in fields:
            settings["use_explicit_typing"] = False
    return settings


def compile_tensorrt(graph: torch.nn.Module, shapes: GraphShapes, path: Path) -> None:
    torch_tensorrt = require_tensorrt()
    exported = torch.export.export(graph, shapes.example, dynamic_shapes=shapes.dynamic)
    inputs = []
    for tensor, dims in zip(shapes.example, shapes.dynamic):
        ranges = [list(tensor.shape) for _ in range(3)]
        for axis, dim in dims.items():
            for which, size in enumerate(shapes.sizes[dim.__name__]):
                ranges[which][axis] = size
        inputs.append(
            torch_tensorrt.Input(min_shape=ranges[0], opt_shape=ranges[1], max_shape=ranges[2], dtype=tensor.dtype)
        )
    compiled = torch_tensorrt.dynamo.compile(exported, arg_inputs=inputs, **tensorrt_settings(torch_tensorrt))
    torch_tensorrt.save(
        compiled,
        str(path),
        output_format="exported_program",
        arg_inputs=list(shapes.example),
        dynamic_shapes=shapes.dynamic,
    )


def load_tensorrt(path: Path) -> Callable:
    require_tensorrt()  # registers the TensorRT engine ops the exported program calls
    return torch.export.load(str(path)).module()
