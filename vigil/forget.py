"""`python -m vigil.forget`: removes the Redis keys of the default namespaces (`vigil`, and
the demo's `demo`): online features, streams, markers, lists. `make clean` runs it, so
that starting over starts from an empty store. It never starts a Redis: with none
answering at REDIS_URL there is nothing to forget."""

from __future__ import annotations

import sys

import redis

from vigil.online.store import delete_namespace
from vigil.settings import Settings, redact


def main() -> int:
    settings = Settings()
    removed = 0
    try:
        for name in {settings.key_prefix, settings.feast_project, "demo"}:
            removed += delete_namespace(settings.redis_url, name, name)
    except redis.ConnectionError:
        print(f"no Redis answers at {redact(settings.redis_url)}: no keys to remove")
        return 0
    print(f"removed {removed:,} keys of Vigil's default namespaces from {redact(settings.redis_url)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
