"""The paired NDCG@10 interval of bench/quality.py between models of two of its runs (two JSON files,
e.g. two checkouts of the code), on the test users both judged:

    python bench/paired.py RUN_A.json:DATASET:MODEL RUN_B.json:DATASET:MODEL   # A - B
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import paired_interval  # noqa: E402


def runs_of(spec: str) -> list[dict]:
    path, dataset, model = spec.rsplit(":", 2)
    return json.loads(Path(path).read_text())[dataset][model]


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    difference, low, high = paired_interval(runs_of(sys.argv[1]), runs_of(sys.argv[2]))
    print(f"{sys.argv[1]} - {sys.argv[2]}: {difference:+.4f} NDCG@10, paired 95% interval [{low:+.4f}, {high:+.4f}]")


if __name__ == "__main__":
    main()
