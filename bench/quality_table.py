"""One table of bench/quality.py, with its paired comparisons, from rows of several of its runs (JSON
files): variants trained by separate commands, or a peer's recorded row beside a re-run of ours.

    python bench/quality_table.py --out TABLE.md RUN.json:DATASET:MODEL[,MODEL...] ...

Rows keep the order given; the command printed in the table is this one, so say in the table's
notes which commands made the runs.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import markdown  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="+", metavar="RUN.json:DATASET:MODEL[,MODEL...]")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of our variants, as the table's protocol says")
    parser.add_argument("--jobs", type=int, default=2, help="models the runs trained at once")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results: dict[str, dict] = {}
    for spec in args.rows:
        path, dataset, models = spec.rsplit(":", 2)
        run = json.loads(Path(path).read_text())[dataset]
        for model in models.split(","):
            if model not in run:
                parser.error(f"{spec}: no model {model!r} in {path} (it has {', '.join(run)})")
            results.setdefault(dataset, {})[model] = run[model]
    table = markdown(results, "python bench/quality_table.py " + shlex.join(sys.argv[1:]), args.seeds, args.jobs)
    args.out.write_text(table)
    args.out.with_suffix(".json").write_text(json.dumps(results))
    print(table)


if __name__ == "__main__":
    main()
