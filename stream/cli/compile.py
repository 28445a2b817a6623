"""`intentstream compile MODEL_DIR [--backend aoti|tensorrt] [--out PATH]`: compile a trained model's
scoring graphs into an artifact that `intentstream run --backend aoti:PATH` (or tensorrt:PATH) loads.
Written beside the model by default (MODEL_DIR/aoti), where `run`'s default backend, auto, finds it."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from stream.cli.arguments import positive_int
from stream.errors import EXIT_OK, CommandError

COMPILE_HELP = "compile a model for a faster runtime backend (AOTInductor or TensorRT)"


def add_compile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", type=Path, help="model directory made by `intentstream train`")
    parser.add_argument("--backend", choices=("aoti", "tensorrt"), default="aoti",
                        help="aoti: torch.export + AOTInductor (CPU or GPU); tensorrt: TensorRT fp16 (NVIDIA GPU, "
                        "needs torch-tensorrt) (default: aoti)")
    parser.add_argument("--out", type=Path, default=None,
                        help="artifact directory to write (default: MODEL_DIR/BACKEND, where `run --backend auto` "
                        "looks)")
    parser.add_argument("--device", default=None,
                        help="device to compile for: cpu or cuda (default: cuda for tensorrt, else cpu)")
    parser.add_argument("--max-batch", type=positive_int, default=1024,
                        help="most users one graph call may score; larger micro-batches are split (default: 1024)")


def compile_command(args: argparse.Namespace) -> int:
    from model.serving.backends import BackendError, artifact_beside, compile_artifact
    from model.serving.scorer import Scorer

    if args.out is None:
        args.out = artifact_beside(args.model_dir, args.backend)
    if args.out.exists() and any(args.out.iterdir()) and not (args.out / "manifest.json").exists():
        raise CommandError(f"--out {args.out} exists and is not an artifact; choose a new path")
    scorer = Scorer.load(args.model_dir)  # a CheckpointError is reported by stream.cli.main
    device = args.device or ("cuda" if args.backend == "tensorrt" else "cpu")
    started = time.perf_counter()
    try:
        manifest = compile_artifact(scorer.model, args.backend, args.out, device=device, max_batch=args.max_batch)
    except BackendError as error:
        raise CommandError(str(error)) from None
    print(
        f"compiled {args.model_dir} for {manifest['backend']} on {manifest['device']} in "
        f"{time.perf_counter() - started:.0f}s (batches up to {manifest['max_batch']} users, windows up to "
        f"{manifest['max_rows']} rows) into {args.out}; run it with --backend {args.backend}:{args.out}"
        + (" (or the default, auto)" if args.out == artifact_beside(args.model_dir, args.backend) else "")
    )
    return EXIT_OK
