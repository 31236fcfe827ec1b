"""How quiet the machine itself is, measured in the same run as the figures beside it.

A process that sleeps 1 ms in a loop, alone: every wake-up more than 3 ms late is a stall
that no code under test caused (a hypervisor taking the CPU back shows as "steal" time in
/proc/stat). A tail target of a few milliseconds means little on a machine that stalls
several times a second for 10 ms: the benches print these figures beside their tails.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

LATE_MS = 3.0


def _cpu_times() -> list[int]:
    stat = Path("/proc/stat")
    if not stat.exists():
        return []
    return [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]


def stalls(seconds: float = 5.0) -> dict[str, Any]:
    """Wake-ups of a 1 ms sleep later than LATE_MS, per second, the worst one, and the share
    of CPU time the hypervisor took (steal; None where /proc/stat is not there)."""
    before = _cpu_times()
    late: list[float] = []
    end = time.perf_counter() + seconds
    while (started := time.perf_counter()) < end:
        time.sleep(0.001)
        over = (time.perf_counter() - started - 0.001) * 1000
        if over > LATE_MS:
            late.append(over)
    after = _cpu_times()
    steal = None
    if before and after and len(before) > 7:
        spent = [b - a for a, b in zip(before, after, strict=True)]
        steal = round(100 * spent[7] / max(sum(spent), 1), 2)
    return {
        "seconds": seconds,
        "stalls_over_3ms_per_s": round(len(late) / seconds, 2),
        "worst_stall_ms": round(max(late), 2) if late else 0.0,
        "steal_percent": steal,
    }


def describe(figures: dict[str, Any]) -> str:
    steal = f", CPU steal {figures['steal_percent']} %" if figures.get("steal_percent") is not None else ""
    return (
        f"the machine itself, same run: {figures['stalls_over_3ms_per_s']} stalls over {LATE_MS:.0f} ms a second "
        f"(worst {figures['worst_stall_ms']} ms){steal}, idle process sleeping 1 ms"
    )
