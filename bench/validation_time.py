"""How long `train`'s validation pass takes on a catalogue-scale world of bench/catalogue.py (its
--workdir): an untrained model of the variant, every validation target ranked against the whole
catalogue, as after each epoch. To compare two versions of the code on one machine, alternate them:

    for code in OLD_CHECKOUT NEW_CHECKOUT OLD_CHECKOUT NEW_CHECKOUT; do
        PYTHONPATH=$code python bench/validation_time.py --workdir W --size 200000 --variant V3; done
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import model.item_layer
from model.config import TrainConfig
from model.playlogs.files import read_catalogue, read_user_sequences
from model.training.train import Run, featurize_sequences
from model.training.validation import Validation, held_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="bench/catalogue.py's, holding world-SIZE.msgpack")
    parser.add_argument("--size", type=int, default=200_000)
    parser.add_argument("--variant", default="V3")
    args = parser.parse_args()
    torch.set_num_threads(1)
    log, catalogue = args.workdir / f"world-{args.size}.msgpack", args.workdir / f"world-{args.size}.catalogue.msgpack"
    config = TrainConfig(softmax="sampled", refit=False)
    sequences = read_user_sequences(log)
    splits = {user: held_out(len(events), config.validation_share) for user, events in sequences.items()}
    origin = min(events[0].ts for events in sequences.values())
    run = Run(sequences, {user: split.validation_from for user, split in splits.items()}, args.variant, origin, None,
              config, list(read_catalogue(catalogue)))  # fmt: skip
    validation = Validation(featurize_sequences(sequences, run.vocab)[0], splits, run.model.config.history_len)
    started = time.perf_counter()
    ndcg = validation.ndcg(run.model)
    print(json.dumps({"code": model.item_layer.__file__, "size": args.size, "variant": args.variant,
                      "validation_s": round(time.perf_counter() - started, 1), "ndcg": ndcg,
                      "targets": validation.targets}))  # fmt: skip


if __name__ == "__main__":
    main()
