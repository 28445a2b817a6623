"""A filesystem of a few megabytes of its own, for the tests and bench campaigns of a full disk: a
tmpfs mounted on an empty directory, which `fill()` fills to the last byte and `free()` empties of
that again. Mounting needs root (or CAP_SYS_ADMIN), as CI and the bench machines have; without it
entering raises RuntimeError saying so.

    with SmallVolume(tmp_path / "volume", 4 << 20) as volume:
        ... write in volume.path ...
        volume.fill()      # every write now fails with ENOSPC
        volume.free()
"""
from __future__ import annotations

import errno
import subprocess
from pathlib import Path

FILL_CHUNK = b"\0" * 4096


class SmallVolume:
    def __init__(self, path: Path, size_bytes: int):
        self.path = Path(path)
        self.size_bytes = size_bytes
        self.filler = self.path / "filler"

    def __enter__(self) -> "SmallVolume":
        self.path.mkdir(parents=True, exist_ok=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_bytes}", "tmpfs", str(self.path)],
                                 capture_output=True, text=True)  # fmt: skip
        if mounted.returncode != 0:
            raise RuntimeError(f"cannot mount a {self.size_bytes:,}-byte tmpfs at {self.path} "
                               f"({mounted.stderr.strip() or mounted.returncode}): the disk-full tests and "
                               "campaigns need root or CAP_SYS_ADMIN")  # fmt: skip
        return self

    def fill(self) -> None:
        """Write to a filler file until the volume has no page left."""
        with open(self.filler, "ab", buffering=0) as filler:
            try:
                while True:
                    filler.write(FILL_CHUNK)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def __exit__(self, *exc_info: object) -> None:
        # Lazily: a process that still has a file open there (a killed run's last moments) keeps it busy.
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
