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

import model.item_layer  # first: the checkout on PYTHONPATH is measured (catalogue puts this one's root first)
from catalogue import selection_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="bench/catalogue.py's, holding world-SIZE.msgpack")
    parser.add_argument("--size", type=int, default=200_000)
    parser.add_argument("--variant", default="V3")
    args = parser.parse_args()
    torch.set_num_threads(1)
    log, catalogue = args.workdir / f"world-{args.size}.msgpack", args.workdir / f"world-{args.size}.catalogue.msgpack"
    run, validation, _ = selection_run(log, catalogue, args.variant, "sampled")
    started = time.perf_counter()
    ndcg = validation.ndcg(run.model)
    print(json.dumps({"code": model.item_layer.__file__, "size": args.size, "variant": args.variant,
                      "validation_s": round(time.perf_counter() - started, 1), "ndcg": ndcg,
                      "targets": validation.targets}))  # fmt: skip


if __name__ == "__main__":
    main()
