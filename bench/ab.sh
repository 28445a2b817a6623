#!/usr/bin/env bash
# Before/after: the inference (--quick) and stream benchmarks of two revisions, alternated in one run
# so that both see the same machine, twice each. Worktrees of the revisions go under a scratch
# folder; the tables are written there and their headline rows printed.
#
#   bash bench/ab.sh OLD_REV [NEW_REV]        # NEW_REV defaults to HEAD
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:?usage: bash bench/ab.sh OLD_REV [NEW_REV]}
new=${2:-HEAD}
python=${PYTHON:-$(command -v python)}
scratch=$(mktemp -d)
git worktree add -q "$scratch/old" "$old"
git worktree add -q "$scratch/new" "$new"
trap 'git worktree remove --force "$scratch/old"; git worktree remove --force "$scratch/new"' EXIT
for round in 1 2; do
  for side in old new; do
    (cd "$scratch/$side" && PYTHONPATH=. "$python" bench/inference.py --quick --threads 1 --processes 0 \
        --out "$scratch/inference-$side-$round.md" > "$scratch/inference-$side-$round.log" 2>&1)
    (cd "$scratch/$side" && "$python" bench/stream.py --live-events 1500 --saturation-events 10000 \
        --out "$scratch/stream-$side-$round.md" > "$scratch/stream-$side-$round.log" 2>&1)
  done
done
for side in old new; do
  for round in 1 2; do
    echo "== $side ($( [ $side = old ] && echo "$old" || echo "$new" )), round $round"
    grep -E "^\| (eager|aoti) \| 100 \| (1|64|512|1024) \| (incremental|full) " "$scratch/inference-$side-$round.md"
    grep -E "^\| (intentrec|no model|batch 1) " "$scratch/stream-$side-$round.md"
  done
done
echo "tables in $scratch"
