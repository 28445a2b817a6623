"""`intentstream`: the command line. Each subcommand checks its inputs before doing any work and
exits with status 2 and a message that says what to fix."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.checkpoint import CheckpointError
from model.playlogs.files import LogError
from stream.arguments import positive_int, timestamp_ms

EXIT_USAGE = 2


class UsageError(Exception):
    """A bad argument, file or model; the message says what to fix."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except (UsageError, LogError, CheckpointError) as error:
        print(f"intentstream {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intentstream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="make play logs").add_subparsers(dest="source", required=True)
    synth = data.add_parser("synth", help="generate a synthetic world of users and titles")
    synth.add_argument("--out", type=Path, required=True, help="log file: .jsonl or .msgpack, optionally .gz")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--users", type=positive_int, default=None, help="number of users (default: the generator's)")
    synth.set_defaults(handler=data_synth)
    movielens = data.add_parser("movielens", help="convert MovieLens-100K to play events")
    movielens.add_argument("directory", type=Path, help="ml-100k directory (RecBole atomic files or u.data/u.item)")
    movielens.add_argument("--out", type=Path, required=True)
    movielens.set_defaults(handler=data_movielens)

    train = commands.add_parser("train", help="train an IntentRec model on a play log")
    train.add_argument("log", type=Path)
    train.add_argument("--out", type=Path, required=True, help="model directory to write")
    train.add_argument("--variant", choices=("V0", "V1", "V2", "V3"), default="V3",
                       help="V0 no intent tasks, V1 parallel heads, V2 no short-term encoder, V3 full (default)")
    train.add_argument("--until", type=timestamp_ms, default=None,
                       help="train only on events before this time (epoch ms or ISO date, UTC)")
    train.add_argument("--epochs", type=positive_int, default=30)
    train.add_argument("--patience", type=positive_int, default=3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--small", action="store_true", help="a tiny model for smoke tests and demos")
    train.add_argument("--torch-threads", type=positive_int, default=1,
                       help="intra-op threads (default 1: this small model gains little from more, and "
                            "spinning threads cost much on a busy machine)")
    train.set_defaults(handler=train_command)

    evaluate = commands.add_parser("evaluate", help="leave-one-out evaluation of a model on a play log")
    evaluate.add_argument("model_dir", type=Path)
    evaluate.add_argument("log", type=Path)
    evaluate.add_argument("--out", type=Path, default=None, help="JSON report (default: MODEL_DIR/evaluation.json)")
    evaluate.set_defaults(handler=evaluate_command)

    from stream.run import add_run_arguments, run_command

    run = commands.add_parser("run", help="score a Kafka topic of play events continuously")
    add_run_arguments(run)
    run.set_defaults(handler=run_command)

    from stream.compile import COMPILE_HELP, add_compile_arguments, compile_command

    compile_parser = commands.add_parser("compile", help=COMPILE_HELP)
    add_compile_arguments(compile_parser)
    compile_parser.set_defaults(handler=compile_command)

    from stream.demo import add_demo_arguments, demo_command

    demo = commands.add_parser("demo", help="everything on this machine: broker, synthetic world, model, live updates")
    add_demo_arguments(demo)
    demo.set_defaults(handler=demo_command)

    from stream.backtest import add_backtest_arguments, backtest_command

    backtest = commands.add_parser("backtest", help="replay a play log or topic through the dataflow and judge it")
    add_backtest_arguments(backtest)
    backtest.set_defaults(handler=backtest_command)
    return parser


def data_synth(args) -> None:
    from model.playlogs.files import log_format, write_log
    from model.playlogs.synth import generate_world

    log_format(args.out)
    options = {} if args.users is None else {"n_users": args.users}
    count = write_log(args.out, generate_world(seed=args.seed, **options))
    print(f"wrote {count} events to {args.out}")


def data_movielens(args) -> None:
    from model.playlogs.files import log_format, write_log
    from model.playlogs.movielens import read_movielens

    log_format(args.out)
    count = write_log(args.out, read_movielens(args.directory))
    print(f"wrote {count} events to {args.out}")


SMALL_MODEL = dict(d_item=32, d_small=8, d_model=32, d_proj=16, n_layers_item=1, attention_window=20)


def train_command(args) -> None:
    import torch

    from model.config import TrainConfig
    from model.training.train import train_model

    if args.out.exists() and any(args.out.iterdir()) and not (args.out / "config.json").exists():
        raise UsageError(f"--out {args.out} exists and is not a model directory; choose a new path")
    torch.set_num_threads(args.torch_threads)
    result = train_model(
        args.log,
        args.out,
        variant=args.variant,
        until_ts=args.until,
        train_config=TrainConfig(epochs=args.epochs, patience=args.patience, seed=args.seed),
        model_overrides=SMALL_MODEL if args.small else None,
    )
    print(
        f"trained {args.variant} on {result.train_events} events in {result.wall_s:.0f}s: best validation "
        f"NDCG@10 {result.best_validation_ndcg:.4f} at epoch {result.best_epoch}/{result.epochs}; saved to {result.model_dir}"
    )


def evaluate_command(args) -> None:
    from model.training.evaluate import evaluate, format_report
    from model.serving.scorer import Scorer
    from model.training.train import load_rows

    scorer = Scorer.load(args.model_dir)
    rows_by_user, _ = load_rows(args.log, vocab=scorer.vocab)
    report = {"model": str(args.model_dir), "log": str(args.log), **evaluate(scorer, rows_by_user, scorer.vocab)}
    out = args.out or args.model_dir / "evaluation.json"
    out.write_text(json.dumps(report, indent=2))
    print(format_report(report))
    print(f"report written to {out}")


if __name__ == "__main__":
    sys.exit(main())
