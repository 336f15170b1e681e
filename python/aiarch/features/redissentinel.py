"""A throw-away Redis Sentinel deployment for tests: Debian's redis-server as one master, its
replicas and the sentinels watching them (`redis-server sentinel.conf --sentinel`), one process
each on free loopback ports in a temporary directory.

    with TemporaryRedisSentinel(replicas=1, sentinels=3) as deployment:
        store = FeatureStore(deployment.url)   # redis+sentinel://127.0.0.1:S1,.../aiarch
        deployment.kill(deployment.master_port())   # the sentinels promote a replica
"""

from __future__ import annotations

import shutil
from typing import Any

from .redistemp import TemporaryRedisProcesses, free_ports

__all__ = ["RedisSentinelUnavailable", "TemporaryRedisSentinel"]


class RedisSentinelUnavailable(RuntimeError):
    """redis-server is missing, or the deployment did not come up."""


class TemporaryRedisSentinel(TemporaryRedisProcesses):
    """One master, `replicas` replicas and `sentinels` sentinels (quorum: a majority of them)
    for the service `service`; `stop()` ends every process. With `password`, the data nodes
    require it (the sentinels themselves do not)."""

    unavailable = RedisSentinelUnavailable

    def __init__(
        self,
        replicas: int = 1,
        sentinels: int = 3,
        service: str = "aiarch",
        down_after_ms: int = 500,
        failover_timeout_ms: int = 2000,
        password: str | None = None,
    ) -> None:
        super().__init__("aiarch-redis-sentinel-")
        self.service = service
        self.password = password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        ports = free_ports(1 + replicas + sentinels)
        self.data_ports = ports[: 1 + replicas]
        self.sentinel_ports = ports[1 + replicas :]
        self.quorum = len(self.sentinel_ports) // 2 + 1

    @property
    def url(self) -> str:
        from urllib.parse import quote

        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis+sentinel://{auth}{hosts}/{self.service}"

    def start(self) -> TemporaryRedisSentinel:
        server = shutil.which("redis-server")
        if server is None:
            raise RedisSentinelUnavailable(
                "redis-server is not installed (bash scripts/setup.sh installs it)"
            )
        master = self.data_ports[0]
        try:
            for port in self.data_ports:
                workdir = self.dir / str(port)
                workdir.mkdir()
                follow = ["--replicaof", "127.0.0.1", str(master)] if port != master else []
                if self.password:  # any node may become the master: each requires and uses it
                    follow += ["--requirepass", self.password, "--masterauth", self.password]
                self._spawn(
                    port,
                    [
                        *(server, "--bind", "127.0.0.1", "--port", str(port), *follow),
                        *("--dir", str(workdir), "--save", "", "--appendonly", "no"),
                        *("--logfile", str(workdir / "redis.log")),
                    ],
                )
            for port in self.sentinel_ports:
                workdir = self.dir / str(port)
                workdir.mkdir()
                conf = workdir / "sentinel.conf"  # sentinels rewrite their config: a file each
                conf.write_text(
                    f"bind 127.0.0.1\nport {port}\ndir {workdir}\n"
                    f"logfile {workdir / 'sentinel.log'}\n"
                    f"sentinel monitor {self.service} 127.0.0.1 {master} {self.quorum}\n"
                    f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                    f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {self.service} 1\n"
                    + (
                        f"sentinel auth-pass {self.service} {self.password}\n"
                        if self.password
                        else ""
                    )
                )
                self._spawn(port, [server, str(conf), "--sentinel"])
            self._wait(self._formed, "the sentinels did not see the master, replicas and peers")
        except BaseException:
            self.stop()
            raise
        return self

    def _formed(self) -> bool:
        import redis

        replicas = len(self.data_ports) - 1
        try:
            for port in self.sentinel_ports:
                with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as s:
                    state = s.sentinel_master(self.service)
                    # Healthy in this sentinel's eyes (flags exactly "master": not s_down or
                    # o_down), as a client asking it for the master requires.
                    if not state.get("is_master") or state.get("is_sdown") or state.get("is_odown"):
                        return False
                    if int(state["num-slaves"]) < replicas:
                        return False
                    if int(state["num-other-sentinels"]) < len(self.sentinel_ports) - 1:
                        return False
            return self.replicated()
        except redis.RedisError:
            return False

    def client(self, port: int) -> Any:
        """A client of the data node on `port` (with the deployment's password)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=port, password=self.password, socket_timeout=5)

    def master_port(self) -> int:
        """Port of the data node that answers ROLE as master (alive ones only)."""
        for port in self.data_ports:
            if not self.alive(port):
                continue
            with self.client(port) as r:
                if r.execute_command("ROLE")[0] in (b"master", "master"):
                    return port
        raise RedisSentinelUnavailable("no live data node is a master")

    def replicated(self) -> bool:
        """Whether every live replica has received everything the master has."""
        with self.client(self.master_port()) as r:
            info = r.info("replication")
        offset = info["master_repl_offset"]
        replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        live = sum(1 for p in self.data_ports if self.alive(p)) - 1
        return len(replicas) >= live and all(int(s["offset"]) >= offset for s in replicas)

    def wait_replicated(self, timeout_s: float = 10.0) -> None:
        self._wait(self.replicated, "replicas did not catch up", timeout_s)
