"""A graceful stop for the flow's sources: Ctrl-C (SIGINT) or SIGTERM ends every source's
input at its next batch, so the dataflow finishes like a replay that ran out: the sinks
write and acknowledge what they hold, and `vigil ingest` prints its summary.

Signals belong to the process, so the flag does too: one Event per process, set by the
handler `install` puts in place (in each flow process) and read by the sources.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

_REQUESTED = threading.Event()


def requested() -> bool:
    return _REQUESTED.is_set()


def request(*_: Any) -> None:
    _REQUESTED.set()


def install() -> None:
    """Ctrl-C and SIGTERM stop the sources instead of interrupting whatever runs."""
    _REQUESTED.clear()
    signal.signal(signal.SIGINT, request)
    signal.signal(signal.SIGTERM, request)
