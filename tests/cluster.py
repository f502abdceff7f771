"""A real multi-node Ray cluster on loopback for fault-injection tests: a head and worker nodes,
each a `ray start --block` in its own process group with its own --temp-dir and ports, and an
auth token of its own (RAY_AUTH_MODE=token + RAY_AUTH_TOKEN in every node's and driver's
environment, so ~/.ray/auth_token and other Ray instances on the machine are never touched).

Stopping is by the process groups recorded here, never `ray stop` (that ends every Ray process on
the machine, other people's test sessions included).
"""
from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on loopback (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


_HANDED_OUT: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def worker_port_range(width: int) -> int:
    """The first of `width` consecutive free ports for a node's workers (--min-worker-port). Drawn
    below the kernel's ephemeral range, where free_ports' ports and every outgoing connection's port
    come from, so none of a node's own ports can fall inside it; never overlapping a range this
    process handed out before (several nodes share 127.0.0.1)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    low = max(low, 10000 + 4 * width)
    for _ in range(500):
        start = random.randrange(10000, low - width)
        ports = set(range(start, start + width + 1))  # --max-worker-port is inclusive
        if _HANDED_OUT.isdisjoint(ports) and all(_bindable(p) for p in ports):
            _HANDED_OUT.update(ports)
            return start
    raise RuntimeError(f"no {width} consecutive free ports below {low}")


def wait_for(cond, timeout: float, what: str, every: float = 0.2):
    """Poll cond() until it returns something truthy; fail naming `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    temp_dir: str
    log: Path
    node_manager_port: int
    node_id: str = ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL every process of the node at once: `ray start`, raylet, agents and its Ray
        workers. Workers put themselves in process groups of their own but stay in the session
        that start_new_session opened, so the session id finds them all (and nothing else)."""
        _kill_session(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.wait(timeout=30)


def _kill_session(sid: int) -> None:
    import psutil

    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid:
                os.kill(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass


@dataclass
class LoopbackCluster:
    """Start with start_head(), add_worker(); stop() ends what was started here only."""
    root: Path
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    nodes: list[Node] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of nodes and drivers: this cluster's token, no stale RAY_ADDRESS."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH") and not k.startswith("PYTEST_")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0",
                   YOLO_OFFLINE="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
                   PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
        # a lost node is declared dead in ~3 s, not ~15 s
        env.update(RAY_health_check_period_ms="1000", RAY_health_check_timeout_ms="1000",
                   RAY_health_check_failure_threshold="3", RAY_health_check_initial_delay_ms="1000")
        env.update(extra)
        return env

    def _start(self, name: str, args: list[str], num_cpus: int, resources: dict | None) -> Node:
        # short temp dirs: Ray's unix sockets live under them and socket paths are limited to ~107 bytes
        temp_dir = tempfile.mkdtemp(prefix=f"rc-{name}-", dir="/tmp")
        nm, om, agent, agent_grpc, rt_env, metrics = free_ports(6)
        wmin = worker_port_range(40)
        log = self.root / f"{name}.log"
        cmd = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--temp-dir", temp_dir,
               "--num-cpus", str(num_cpus), "--num-gpus", "0", "--object-store-memory", str(300 << 20),
               "--node-manager-port", str(nm), "--object-manager-port", str(om),
               "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
               "--runtime-env-agent-port", str(rt_env), "--metrics-export-port", str(metrics),
               "--min-worker-port", str(wmin), "--max-worker-port", str(wmin + 40),
               "--disable-usage-stats", *args]
        # a custom resource named after the node tells nodes apart in the state API (they share an IP)
        cmd += ["--resources", json.dumps({**(resources or {}), f"node_{name}": 1})]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env(), stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        node = Node(name, proc, temp_dir, log, nm)
        self.nodes.append(node)
        return node

    def start_head(self, num_cpus: int = 1, resources: dict | None = None) -> Node:
        self.gcs_port, self.dashboard_port, client = free_ports(3)
        head = self._start("head", ["--head", "--port", str(self.gcs_port), "--include-dashboard", "true",
                                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                                    "--ray-client-server-port", str(client)], num_cpus, resources)
        self.wait_nodes(1)
        return head

    def add_worker(self, num_cpus: int = 1, resources: dict | None = None) -> Node:
        node = self._start(f"worker{len(self.nodes)}", ["--address", self.address], num_cpus, resources)
        self.wait_nodes(sum(n.alive() for n in self.nodes))
        return node

    def state(self, what: str) -> list[dict] | None:
        """Rows of the state API (`actors`, `nodes`, `tasks`) over the head's dashboard, with this
        cluster's token: the test process itself never joins the cluster (one ray.init per process,
        and other test modules of the session run their own local Ray)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.dashboard_port}/api/v0/{what}?limit=10000&detail=1",
                                     headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                body = json.loads(r.read())
        except (OSError, ValueError):  # dashboard not up yet, or busy: unknown, not "none"
            return None
        return body.get("data", {}).get("result", {}).get("result", [])

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.state("nodes") or [] if n.get("state") == "ALIVE"]

    def actors(self, udf: str, state: str = "ALIVE") -> list[dict] | None:
        """Actors whose class or repr names `udf` (Ray Data's pool actors are `_MapWorker`s whose
        repr is `MapWorker(MapBatches(<udf>))`); None when the state API did not answer."""
        rows = self.state("actors")
        if rows is None:
            return None
        return [a for a in rows if a.get("state") == state
                and (udf in (a.get("class_name") or "") or udf in (a.get("repr_name") or ""))]

    def node_of(self, node_id: str) -> "Node":
        return next(n for n in self.nodes if n.node_id == node_id)

    def wait_nodes(self, n: int, timeout: float = 120) -> list[dict]:
        for node in self.nodes:
            if not node.alive() and node.proc.returncode not in (None, -9):
                raise RuntimeError(f"{node.name} exited with {node.proc.returncode}:\n{node.log.read_text()[-3000:]}")
        got = wait_for(lambda: (lambda a: a if len(a) == n else None)(self.alive_nodes()), timeout,
                       f"{n} alive nodes")
        for node in self.nodes:
            node.node_id = next((a["node_id"] for a in got if f"node_{node.name}" in a["resources_total"]),
                                node.node_id)
        return got

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        for node in self.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)
