"""A throw-away Redis Cluster for tests and benchmarks: Debian's redis-server, one process per
node on free loopback ports in a temporary directory, joined by `redis-cli --cluster create`.

    with TemporaryRedisCluster(masters=3, replicas=1) as cluster:
        store = FeatureStore(cluster.url)          # redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...
        cluster.kill(cluster.master_of(b"key"))    # a replica takes over after node_timeout_ms
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from functools import partial

from .redistemp import TemporaryRedisProcesses, free_ports

__all__ = ["RedisClusterUnavailable", "TemporaryRedisCluster"]


class RedisClusterUnavailable(RuntimeError):
    """redis-server / redis-cli are missing, or the cluster did not form."""


class TemporaryRedisCluster(TemporaryRedisProcesses):
    """`masters` primaries with `replicas` replicas each; `stop()` ends every node."""

    unavailable = RedisClusterUnavailable

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000):
        super().__init__("aiarch-redis-cluster-")
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        n = masters * (1 + replicas)
        ports = free_ports(2 * n)
        self.ports = ports[:n]
        self._bus_ports = ports[n:]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self) -> TemporaryRedisCluster:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise RedisClusterUnavailable(
                "redis-server/redis-cli are not installed (bash scripts/setup.sh installs them)"
            )
        for port, bus in zip(self.ports, self._bus_ports):
            workdir = self.dir / str(port)
            workdir.mkdir()
            self._spawn(
                port,
                [
                    *(server, "--bind", "127.0.0.1", "--port", str(port)),
                    *("--cluster-port", str(bus), "--cluster-enabled", "yes"),
                    *("--cluster-config-file", "nodes.conf"),
                    *("--cluster-node-timeout", str(self.node_timeout_ms)),
                    *("--dir", str(workdir), "--save", "", "--appendonly", "no"),
                    *("--logfile", str(workdir / "redis.log")),
                ],
            )
        try:
            for port in self.ports:
                self._wait(partial(self._ping, port), f"node {port} did not answer")
            create = subprocess.run(
                [
                    *(cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports)),
                    *("--cluster-replicas", str(self.replicas), "--cluster-yes"),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if create.returncode != 0:
                raise RedisClusterUnavailable(f"redis-cli --cluster create failed: {create.stdout}")
            self._wait(self._formed, "the cluster did not reach state ok with every replica")
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _ping(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _client(self, port: int) -> object:
        import redis

        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)

    def _formed(self) -> bool:
        import redis

        try:
            for port in self.alive_ports():
                with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as r:
                    if r.cluster("info")["cluster_state"] != "ok":
                        return False
                    if (
                        self.replicas
                        and len(self.roles()["replica"]) < self.masters * self.replicas
                    ):
                        return False
            return True
        except redis.RedisError:
            return False

    def alive_ports(self) -> list[int]:
        return [p for p in self.procs if self.alive(p)]

    def roles(self) -> dict[str, list[int]]:
        """Ports of the live masters and replicas, by role."""
        import redis

        out: dict[str, list[int]] = {"master": [], "replica": []}
        for port in self.alive_ports():
            with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as r:
                role = r.execute_command("ROLE")[0]
                out["master" if role in (b"master", "master") else "replica"].append(port)
        return out

    def master_of(self, key: bytes) -> int:
        """Port of the master that serves `key`'s slot now."""
        import redis

        port = self.alive_ports()[0]
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as r:
            slot = int(r.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in r.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise RedisClusterUnavailable(f"no master serves slot {slot}")

    def wait_replicated(self, timeout_s: float = 10.0) -> None:
        """Return once every replica has received everything its master has."""
        import redis

        def caught_up() -> bool:
            for port in self.roles()["master"]:
                with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as r:
                    info = r.info("replication")
                    offset = info["master_repl_offset"]
                    replicas = [v for k, v in info.items() if k.startswith("slave")]
                    if len(replicas) < self.replicas:
                        return False
                    if any(int(s["offset"]) < offset for s in replicas):
                        return False
            return True

        self._wait(caught_up, "replicas did not catch up", timeout_s)

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Return once every live node reports the cluster ok (after a failover)."""
        import redis

        def ok() -> bool:
            try:
                for port in self.alive_ports():
                    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as r:
                        if r.cluster("info")["cluster_state"] != "ok":
                            return False
                return True
            except redis.RedisError:
                return False

        self._wait(ok, "the cluster did not recover", timeout_s)
