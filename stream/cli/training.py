"""`intentstream data`, `train` and `evaluate`: the offline commands, around model/."""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from model.config import LOSS_WEIGHTINGS, TrainConfig
from stream.cli.arguments import decay, positive_int, timestamp_ms
from stream.errors import CommandError
from stream.settings import SMALL_MODEL


def add_training_commands(commands) -> None:
    """The `data`, `train` and `evaluate` subcommands, on the subparsers action `commands`."""
    data = commands.add_parser("data", help="make play logs").add_subparsers(dest="source", required=True)
    synth = data.add_parser("synth", help="generate a synthetic world of users and titles")
    synth.add_argument("--out", type=Path, required=True, help="log file: .jsonl or .msgpack, optionally .gz")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--users", type=positive_int, default=None, help="number of users (default: the generator's)")
    synth.add_argument("--titles", type=positive_int, default=None, help="number of titles (default: the generator's)")
    synth.add_argument("--days", type=positive_int, default=None,
                       help="days simulated from 2024-01-01 (default: the generator's)")
    synth.add_argument("--end-before-now", action="store_true",
                       help="move the world back by whole weeks so that its last play is before now: a replay, as "
                            "the live flow, dead-letters plays from the future")
    synth.add_argument("--catalogue-out", type=Path, default=None,
                       help="catalogue file, every title played or not: .jsonl or .msgpack, optionally .gz "
                            "(default: beside --out, its name with .catalogue before the suffix)")
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
    train.add_argument("--catalogue", type=Path, default=None, metavar="FILE",
                       help="a catalogue file (as `data synth` writes beside its log): its titles are ranked too, "
                            "played or not, with their kind, genres and release date")
    train.add_argument("--until", type=timestamp_ms, default=None,
                       help="train only on events before this time (epoch ms or ISO date, UTC)")
    train.add_argument("--epochs", type=positive_int, default=TrainConfig.epochs)
    train.add_argument("--patience", type=positive_int, default=TrainConfig.patience)
    train.add_argument("--seed", type=int, default=TrainConfig.seed)
    train.add_argument("--loss-weighting", choices=LOSS_WEIGHTINGS, default=TrainConfig.loss_weighting,
                       help="uniform: every next play alike, as ranking metrics count them (default); watch: each "
                            "next play weighted by its watch time, as in the paper")
    train.add_argument("--ema-decay", type=decay, default=TrainConfig.ema_decay,
                       help="the checkpoint keeps an exponential moving average of the weights with this decay per "
                            f"step (default: {TrainConfig.ema_decay}; 0: the last step's weights)")
    train.add_argument("--no-refit", dest="refit", action="store_false",
                       help="keep the selection run's best epoch instead of training that many epochs again on every "
                            "event but the test targets (halves the training time)")
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


def data_synth(args: argparse.Namespace) -> None:
    from model.playlogs.files import catalogue_beside, catalogue_format, log_format, write_catalogue, write_log
    from model.playlogs.synth import MAX_DAYS, generate_world_and_catalogue, moved_to_end_before

    log_format(args.out)
    catalogue_out = args.catalogue_out or catalogue_beside(args.out)
    catalogue_format(catalogue_out)
    if catalogue_out.resolve() == args.out.resolve():
        raise CommandError(f"--catalogue-out {catalogue_out} is the log file --out; choose another path")
    if args.days is not None and args.days > MAX_DAYS:
        raise CommandError(f"--days {args.days}: at most {MAX_DAYS} (the plays must end before 2100)")
    given = {"n_users": args.users, "n_titles": args.titles, "days": args.days}
    titles, events = generate_world_and_catalogue(
        seed=args.seed, **{name: value for name, value in given.items() if value is not None}
    )
    now_ms = int(time.time() * 1000)
    if args.end_before_now:
        titles, events = moved_to_end_before(now_ms, titles, events)
    elif events and events[-1].ts >= now_ms:
        last_play = datetime.fromtimestamp(events[-1].ts / 1000, timezone.utc)
        print(f"intentstream data: the plays run until {last_play:%Y-%m-%d}, after now: a replay dead-letters the "
              "later ones as from the future (--end-before-now moves the world back)", file=sys.stderr)
    title_count = write_catalogue(catalogue_out, (title.catalogue_entry() for title in titles))
    count = write_log(args.out, events)
    print(f"wrote {count} events to {args.out} and {title_count} titles to {catalogue_out}")


def data_movielens(args: argparse.Namespace) -> None:
    from model.playlogs.files import log_format, write_log
    from model.playlogs.movielens import read_movielens

    log_format(args.out)
    count = write_log(args.out, read_movielens(args.directory))
    print(f"wrote {count} events to {args.out}")


def train_command(args: argparse.Namespace) -> None:
    import torch

    from model.training.train import train_model

    if args.out.exists() and any(args.out.iterdir()) and not (args.out / "config.json").exists():
        raise CommandError(f"--out {args.out} exists and is not a model directory; choose a new path")
    torch.set_num_threads(args.torch_threads)
    result = train_model(
        args.log,
        args.out,
        variant=args.variant,
        until_ts=args.until,
        train_config=TrainConfig(epochs=args.epochs, patience=args.patience, seed=args.seed,
                                 loss_weighting=args.loss_weighting, ema_decay=args.ema_decay, refit=args.refit),
        model_overrides=SMALL_MODEL if args.small else None,
        catalogue_path=args.catalogue,
    )
    print(
        f"trained {args.variant} on {result.train_events} events in {result.wall_s:.0f}s: best validation "
        f"NDCG@10 {result.best_validation_ndcg:.4f} over {result.validation_targets} targets at epoch "
        f"{result.best_epoch}/{result.epochs}{', then refit that many epochs' if args.refit else ''}; "
        f"saved to {result.model_dir}"
    )


def evaluate_command(args: argparse.Namespace) -> None:
    from model.serving.scorer import Scorer
    from model.training.evaluate import evaluate, format_report
    from model.training.train import load_rows

    scorer = Scorer.load(args.model_dir)
    rows_by_user, _ = load_rows(args.log, vocab=scorer.vocab)
    report = {"model": str(args.model_dir), "log": str(args.log), **evaluate(scorer, rows_by_user, scorer.vocab)}
    out = args.out or args.model_dir / "evaluation.json"
    out.write_text(json.dumps(report, indent=2))
    print(format_report(report))
    print(f"report written to {out}")
