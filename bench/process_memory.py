"""A process's memory as the kernel reports it (/proc/PID/status), for the benchmarks."""
from __future__ import annotations

from pathlib import Path


def resident_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS), or its peak so far (field="VmHWM"), in MB; NaN once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
