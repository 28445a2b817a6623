"""A flood of made-up titles: what the registry of titles first seen in the stream keeps, and what
reaches other users' recommendations, when producers send plays of ids nobody else plays.

    python bench/registry_flood.py [--plays 1000000] [--real-titles 20] [--gaps 1000,2000,5000,50000]

The serving scorer of the stream benches' model (bench/world.py), its registry fed as the score step
feeds it (batches of 256 plays, model.serving.new_titles.NewTitleRegistry.register_plays), with:

- `--plays` plays of made-up item ids, each by a fresh user (an outsider who can produce to the
  input topic), over an hour of event time, and one in fifty of them backdated to 1970;
- among them, plays of real new releases, each played by five users: `--real-titles` of them for
  each of `--gaps`, the made-up plays between one viewer of a release and the next.

Measured: the titles given a column, how many of them made up; the titles waiting for users and
the hours of counts the registry holds; plays refused as backdated; the registry's memory
(tracemalloc, allocations made while it registers) and the process's resident memory; and what an
update after the flood ranks of the new titles. Replaces its own section of bench/results/hostile.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.process_memory import resident_mb  # noqa: E402
from bench.results_section import write_section  # noqa: E402
from bench.world import BenchWorld  # noqa: E402
from model.serving.new_titles import HORIZON_MS, PENDING_LIMIT  # noqa: E402
from model.serving.scorer import Scorer  # noqa: E402
from schemas import PlayEvent  # noqa: E402

HEADING = "# A flood of made-up titles"
BATCH = 256
HOUR_MS = 3_600_000


def flood(plays: int, real_titles: int, gaps: tuple[int, ...], start_ms: int) -> list[PlayEvent]:
    """The made-up plays, one in fifty backdated, with the real releases' plays among them: as many
    releases for each of `gaps`, whose five viewers come that many made-up plays apart."""
    events = []
    for n in range(plays):
        ts = 0 if n % 50 == 49 else start_ms + n * HOUR_MS // plays
        events.append(PlayEvent(event_id=f"flood-{n}", user_id=f"fresh-{n}", item_id=f"made-up-{n}", ts=ts,
                                action="discover", genres=("Drama",), kind="movie", release_ts=None, duration_s=60.0))
    releases = []
    for gap in gaps:
        for title in range(real_titles):
            first = title * (plays - 4 * gap) // real_titles
            releases += [(first + user * gap, PlayEvent(event_id=f"release-{gap}-{title}-{user}", user_id=f"viewer-{user}",
                                                        item_id=f"release-{gap}-{title}", ts=start_ms + (first + user * gap) * HOUR_MS // plays,
                                                        action="discover", genres=("Comedy",), kind="show", release_ts=None,
                                                        duration_s=1800.0)) for user in range(5)]  # fmt: skip
    for at, event in sorted(releases, key=lambda pair: pair[0], reverse=True):
        events.insert(at, event)
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plays", type=int, default=1_000_000)
    parser.add_argument("--real-titles", type=int, default=20, help="real releases for each of --gaps")
    parser.add_argument("--gaps", default="1000,2000,5000,50000",
                        help="made-up plays between a real release's viewers, one group of releases for each")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "hostile.md")
    args = parser.parse_args()
    command = "python bench/registry_flood.py " + shlex.join(sys.argv[1:])
    world = BenchWorld(small_model=True)
    scorer = Scorer.load(world.model(lambda text: print(text, file=sys.stderr)))
    registry = scorer.new_titles
    start_ms = int(time.time() * 1000) - HOUR_MS
    gaps = tuple(int(gap) for gap in args.gaps.split(","))
    events = flood(args.plays, args.real_titles, gaps, start_ms)
    rows = [scorer.featurize(event) for event in events[:1]]  # every made-up id featurizes alike
    resident_before = resident_mb(os.getpid())
    tracemalloc.start()
    started = time.perf_counter()
    for at in range(0, len(events), BATCH):
        batch = events[at : at + BATCH]
        registry.register_plays(batch, rows * len(batch))
    wall_s = time.perf_counter() - started
    held_bytes, peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    resident_after = resident_mb(os.getpid())
    made_up = [name for name in registry.names if name.startswith("made-up")]
    titles = registry.at(np.array([start_ms + HOUR_MS]))
    ranked = [name for name, plays in zip(titles.names, np.exp(titles.recent_plays[0][0])) if plays > 0]
    lines = [
        HEADING,
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, 2 shared "
        f"cores; {time.strftime('%Y-%m-%d')}. The stream benches' small model's registry (new_title_columns "
        f"{registry.capacity}, new_title_min_users {registry.min_users}), fed in batches of {BATCH} as the score step "
        "feeds it.",
        "",
        f"- {args.plays:,} plays of made-up ids over an hour, each by a fresh user, one in fifty backdated to 1970; "
        f"among them real releases played by five users each, {args.real_titles} for each gap between their viewers "
        f"({len(events):,} plays in {wall_s:.1f} s, {len(events) / wall_s:,.0f} plays/s).",
        f"- Columns given: {len(registry.names)}, made-up ids among them: {len(made_up)}; real releases given one, "
        "by the made-up plays between their viewers: "
        + ", ".join(f"{gap:,} apart {sum(name.startswith(f'release-{gap}-') for name in registry.names)} of "
                    f"{args.real_titles}" for gap in gaps) + ". A title waits for its users among at most "
        f"{PENDING_LIMIT:,} others, those played by the fewest users forgotten first: a release whose second viewer "
        f"comes within about {PENDING_LIMIT:,} made-up ids of its first is kept whatever the flood.",
        f"- Titles waiting for users: {len(registry.pending):,} (at most {PENDING_LIMIT:,}); hours of counts held: "
        f"{len(registry.plays_by_hour)} (at most {HORIZON_MS // HOUR_MS + 1}); backdated plays refused: "
        f"{registry.too_old:,}.",
        f"- The registry's allocations while registering: {held_bytes / 1e6:.1f} MB held at the end, "
        f"{peak_bytes / 1e6:.1f} MB at the peak; the process's resident memory {resident_before:.0f} → "
        f"{resident_after:.0f} MB.",
        f"- What an update an hour after the flood began ranks of the new titles: {len(ranked)} titles, "
        f"{sum(name.startswith('made-up') for name in ranked)} of them made up.",
        "",
    ]
    write_section(args.out, HEADING, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
