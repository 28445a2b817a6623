"""Peer baseline: RecBole 1.2.1's SASRec on exactly our split, with per-user test ranks.

Runs inside its own venv (made by bench/peers/setup_recbole.sh; RecBole is no project dependency):

    bench/.venv-recbole/bin/python bench/peers/sasrec.py --sequences SEQ.jsonl --out RESULT.json \
        [--seeds 1] [--epochs 300] [--workdir DIR] [--time-budget-min M]

SEQ.jsonl has one line per user, {"user": "<id>", "items": ["<id>", ...]}, the items already in
the time order to use (bench/quality.py writes it from a play log). They become a
RecBole atomic dataset (user_id:token, item_id:token, timestamp:float) whose timestamp is the
item's 1-based position in the user's sequence, so RecBole's time ordering cannot re-break ties.
Ids are written as the tokens u<n>/i<n> (first-appearance order, as the input lists them), so no
id can trip RecBole's tab-separated pandas reader, and mapped back for the output.

Protocol: RecBole's sequential defaults (properties/overall.yaml, model/SASRec.yaml, dataset/
sample.yaml, quick_start_config/sequential.yaml): CE loss over all items (no negative sampling),
MAX_ITEM_LIST_LENGTH 50, leave-one-out by user in time order (the last item tests, the one before
validates, every earlier prefix trains), full ranking, early stopping on valid NDCG@10 with
stopping_step 10, no user/item filtering, repeatable, CPU with one torch thread. Users with fewer
than 3 items get no test case (RecBole's leave-one-out needs 2 prior items for valid and test).
Autograd anomaly detection, which importing RecBole's SINE module switches on for the whole
process, is switched off again: it doubles the epoch time and changes no number. On one CPU
thread an epoch of MovieLens-100K takes about 2.5 minutes; --time-budget-min ends training early
(after the epoch that crosses it) and tests the best checkpoint so far, saying so in the result.

Per seed (2020, 2021, ...), after training, the best-validation checkpoint is loaded (by this
script with weights_only=False: torch>=2.6 refuses RecBole's checkpoints, which pickle its Config)
and, besides RecBole's own test metrics, every test user's 1-based rank of the target among all
real items (RecBole's padding id 0 excluded) is computed with ties counted against the model:
rank = #{items with score >= the target's score}. History is not masked, just as in RecBole's
full-sort evaluation of sequential models (FullSortEvalDataLoader passes no history index when
MODEL_TYPE is SEQUENTIAL, so the trainer masks only item 0). "ranks_unseen" is the same rank
with the items the user saw before the target removed from the candidates (the target never is).
NDCG@10 and HR@10 from the ranks must agree with RecBole's reported ones (to 1e-4; RecBole rounds
to 4 decimals), or the script fails.

Output JSON: {"model", "config": the resolved RecBole config, "seeds": [{"seed", "epochs",
"stopped_by" (early stopping, epochs or time budget), "best_epoch" (RecBole's 0-based epoch of the
checkpoint), "wall_s", "recbole_test": {metric:
value}, "ndcg@10_from_ranks", "hit@10_from_ranks", "ndcg@10_unseen", "hit@10_unseen",
"ranks": {user: rank}, "ranks_unseen": {user: rank}}]}. RecBole's log goes to stderr (and to
WORKDIR/log); the dataset, checkpoints and tensorboard files stay in WORKDIR.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

DATASET = "peer"
FIRST_SEED = 2020
TOPK = 10


class OutOfTime(Exception):
    """Raised from RecBole's epoch callback to end training when the time budget is spent."""


def read_sequences(path: Path) -> list[tuple[str, list[str]]]:
    """(user, items) for each line of the JSONL file, in file order; users must be unique."""
    sequences, seen = [], set()
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            user, items = str(row["user"]), [str(item) for item in row["items"]]
            if user in seen:
                raise ValueError(f"{path}:{number}: user {user!r} appears twice")
            if not items:
                raise ValueError(f"{path}:{number}: user {user!r} has no items")
            seen.add(user)
            sequences.append((user, items))
    return sequences


def write_atomic(sequences, data_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Write DATASET.inter under data_path; return the token -> original id maps (users, items)."""
    users, items = {}, {}  # original id -> token
    folder = data_path / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{DATASET}.inter", "w", encoding="utf-8") as out:
        out.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, sequence in sequences:
            user_token = users.setdefault(user, f"u{len(users)}")
            for position, item in enumerate(sequence, 1):
                item_token = items.setdefault(item, f"i{len(items)}")
                out.write(f"{user_token}\t{item_token}\t{position}\n")
    return {t: u for u, t in users.items()}, {t: i for i, t in items.items()}


def recbole_config(data_path: Path, checkpoint_dir: Path, seed: int, epochs: int) -> dict:
    """What this run sets; everything else is RecBole's default for SASRec."""
    return {
        "data_path": str(data_path),
        "checkpoint_dir": str(checkpoint_dir),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
        "val_interval": None,
        "rm_dup_inter": None,
        "MAX_ITEM_LIST_LENGTH": 50,
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "eval_args": {
            "split": {"LS": "valid_and_test"},
            "order": "TO",
            "group_by": "user",
            "mode": "full",
        },
        "repeatable": True,
        "topk": [TOPK],
        "valid_metric": f"NDCG@{TOPK}",
        "stopping_step": 10,
        "epochs": epochs,
        "seed": seed,
        "reproducibility": True,
        "use_gpu": False,
        "gpu_id": "",
        "worker": 0,
        "show_progress": False,
        "log_wandb": False,
    }


def json_safe(value):
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@torch.no_grad()
def test_ranks(model, test_data, dataset, sequences_by_token, uid_tokens):
    """{user token: (rank, rank among items not seen before the target)} for every test case."""
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    model.eval()
    ranks = {}
    for interaction, history_index, _, _ in test_data:
        assert history_index is None  # sequential full sort: RecBole masks no history
        scores = model.full_sort_predict(interaction).clone()
        scores[:, 0] = -torch.inf  # padding id, as RecBole's trainer does
        targets = interaction[iid_field]
        target_scores = scores.gather(1, targets[:, None])
        plain = (scores >= target_scores).sum(1)
        for row, (uid, target) in enumerate(zip(interaction[uid_field].tolist(), targets.tolist())):
            user = uid_tokens[uid]
            items = sequences_by_token[user]
            ids = dataset.token2id(iid_field, items)
            assert ids[-1] == target, f"RecBole's test target for {user} is not its last item"
            length = int(interaction[model.ITEM_SEQ_LEN][row])
            history = interaction[model.ITEM_SEQ][row, :length].numpy()
            assert length == min(len(ids) - 1, model.max_seq_length) and (
                history == ids[-1 - length : -1]
            ).all(), f"RecBole's test input for {user} is not the items before its target"
            seen = torch.as_tensor(np.setdiff1d(ids[:-1], [target]), dtype=torch.long)
            user_scores = scores[row].clone()
            user_scores[seen] = -torch.inf
            unseen = int((user_scores >= target_scores[row]).sum())
            ranks[user] = (int(plain[row]), unseen)
    return ranks


def ndcg_hit(ranks, k=TOPK):
    ranks = np.asarray(list(ranks), dtype=np.float64)
    gains = np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)
    return float(gains.mean()), float((ranks <= k).mean())


def run_seed(seed, epochs, budget_s, data_path, workdir, sequences_by_token, user_ids):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import get_flops, init_logger, init_seed
    from recbole.data.transform import construct_transform
    from logging import getLogger

    # Importing recbole.model.sequential_recommender runs sine.py, which turns on autograd anomaly
    # detection for the whole process: a NaN check of every backward output that about doubles
    # the CPU time of an epoch and changes no number. Off again, as it would be without SINE.
    torch.autograd.set_detect_anomaly(False)

    started = time.perf_counter()
    config = Config(
        model="SASRec",
        dataset=DATASET,
        config_dict=recbole_config(data_path, workdir / f"saved-{seed}", seed, epochs),
    )
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)  # stream handler on stderr (only the first call per process adds it)
    logger = getLogger()
    logger.info(config)
    dataset = create_dataset(config)
    logger.info(dataset)
    kept = (dataset.user_num - 1, dataset.item_num - 1)  # id 0 is padding
    wanted = (len(sequences_by_token), len({i for s in sequences_by_token.values() for i in s}))
    assert kept == wanted, f"RecBole kept {kept} users/items of {wanted}"
    train_data, valid_data, test_data = data_preparation(config, dataset)
    # The rest mirrors recbole.quick_start.run_recbole (which imports ray), RNG use included.
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    logger.info(model)
    flops = get_flops(model, dataset, config["device"], logger, construct_transform(config))
    logger.info(f"FLOPs: {flops}")
    trainer = Trainer(config, model)
    evaluated, stopped = [], "early stopping"

    def after_validation(epoch, score):  # called after RecBole saved any new best checkpoint
        evaluated.append(epoch)
        if budget_s is not None and time.perf_counter() - started > budget_s:
            raise OutOfTime

    try:
        trainer.fit(
            train_data, valid_data, saved=True, show_progress=False, callback_fn=after_validation
        )
    except OutOfTime:
        stopped = "time budget"
        logger.info(f"time budget of {budget_s:.0f} s spent after epoch {evaluated[-1]}")
    if stopped != "time budget" and len(evaluated) == epochs:
        stopped = "epochs"
    checkpoint = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    recbole_test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    logger.info(f"test result (best epoch {checkpoint['epoch']}): {dict(recbole_test)}")

    uid_tokens = dataset.field2id_token[dataset.uid_field]
    by_token = test_ranks(model, test_data, dataset, sequences_by_token, uid_tokens)
    wall = time.perf_counter() - started
    ndcg, hit = ndcg_hit(rank for rank, _ in by_token.values())
    ndcg_unseen, hit_unseen = ndcg_hit(unseen for _, unseen in by_token.values())
    for name, mine in ((f"ndcg@{TOPK}", ndcg), (f"hit@{TOPK}", hit)):
        theirs = float(recbole_test[name])
        if abs(mine - theirs) > 1e-4:
            raise AssertionError(f"seed {seed}: {name} from ranks {mine:.6f} != RecBole {theirs}")
    logger.info(
        f"seed {seed}: ranks agree with RecBole: NDCG@{TOPK} {ndcg:.6f} (RecBole "
        f"{recbole_test[f'ndcg@{TOPK}']}), HR@{TOPK} {hit:.6f}; unseen NDCG@{TOPK} "
        f"{ndcg_unseen:.6f} HR@{TOPK} {hit_unseen:.6f}; {len(by_token)} test users; {wall:.0f} s"
    )
    result = {
        "seed": seed,
        "epochs": (evaluated[-1] + 1) if evaluated else 0,
        "stopped_by": stopped,
        "best_epoch": int(checkpoint["epoch"]),
        "wall_s": round(wall, 1),
        "recbole_test": {k: float(v) for k, v in recbole_test.items()},
        f"ndcg@{TOPK}_from_ranks": ndcg,
        f"hit@{TOPK}_from_ranks": hit,
        f"ndcg@{TOPK}_unseen": ndcg_unseen,
        f"hit@{TOPK}_unseen": hit_unseen,
        "test_users": len(by_token),
        "ranks": {user_ids[t]: r for t, (r, _) in by_token.items()},
        "ranks_unseen": {user_ids[t]: u for t, (_, u) in by_token.items()},
    }
    return result, config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=Path, required=True, help="JSONL of user sequences")
    parser.add_argument("--out", type=Path, required=True, help="result JSON to write")
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds, from 2020 up")
    parser.add_argument("--epochs", type=int, default=300, help="most epochs (early stopping)")
    parser.add_argument("--workdir", type=Path, help="RecBole's files (default: a new temp dir)")
    parser.add_argument(
        "--time-budget-min",
        type=float,
        help="per seed: end training after the first epoch that ends past this many minutes "
        "and test the best checkpoint so far (the result says stopped_by: time budget)",
    )
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value pairs from the command line

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    sequences_path, out = args.sequences.resolve(), args.out.resolve()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="recbole-sasrec-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"sasrec.py: RecBole's files go to {workdir}", file=sys.stderr)

    sequences = read_sequences(sequences_path)
    user_ids, item_ids = write_atomic(sequences, workdir / "data")
    token_of_item = {item: token for token, item in item_ids.items()}
    token_of_user = {user: token for token, user in user_ids.items()}
    sequences_by_token = {
        token_of_user[user]: [token_of_item[i] for i in items] for user, items in sequences
    }
    print(
        f"sasrec.py: {len(sequences)} users, {len(item_ids)} items, "
        f"{sum(len(s) for _, s in sequences)} interactions",
        file=sys.stderr,
    )

    os.chdir(workdir)  # RecBole writes ./log and ./log_tensorboard
    seeds, config = [], None
    for seed in range(FIRST_SEED, FIRST_SEED + args.seeds):
        budget_s = None if args.time_budget_min is None else 60 * args.time_budget_min
        result, seed_config = run_seed(
            seed, args.epochs, budget_s, workdir / "data", workdir, sequences_by_token, user_ids
        )
        seeds.append(result)
        config = config or seed_config
        out.parent.mkdir(parents=True, exist_ok=True)
        resolved = json_safe(config.final_config_dict)
        resolved["seed"] = [s["seed"] for s in seeds]
        resolved.pop("checkpoint_dir", None)
        document = {"model": "SASRec (RecBole 1.2.1)", "config": resolved, "seeds": seeds}
        out.write_text(json.dumps(document, indent=1) + "\n")  # after every seed
    print(f"sasrec.py: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
