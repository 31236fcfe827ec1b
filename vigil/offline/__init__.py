"""The offline side: the flow's event log (`eventlog`), the backfilled feature table and
point-in-time training sets (`training`).

`from vigil.offline import training_set` is what notebooks use; the heavy parts (Feast)
are imported on first use, so the flow's writer does not pay for them.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "training_set": "vigil.offline.training",
    "read_events": "vigil.offline.training",
    "backfill": "vigil.offline.training",
    "logged_days": "vigil.offline.training",
    "OfflineStoreEmptyError": "vigil.offline.training",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vigil.offline' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
