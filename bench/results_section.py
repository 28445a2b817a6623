"""Several benches write one results file (bench/results/hostile.md): each replaces its own section,
from its heading to the next "# " heading, and leaves the others'."""
from __future__ import annotations

from pathlib import Path


def write_section(path: Path, heading: str, lines: list[str]) -> None:
    section = "\n".join(lines)
    existing = path.read_text() if path.exists() else ""
    before, found, after = existing.partition(heading)
    rest = after[after.find("\n# ") :] if found and "\n# " in after else ""
    path.write_text(before.rstrip("\n") + ("\n\n" if before.strip() else "") + section + rest)
