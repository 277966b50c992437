"""Start a Milvus server from the PyPI package ``milvus`` on free ports only.

The package picks a free port for Milvus itself and for the address its
components use to reach etcd, but the embedded etcd server listens on etcd's
defaults (2379 for clients, 2380 for peers) unless told otherwise, so a second
server on one machine collides with the first (seen here: its start took
three minutes of retries). This gives the embedded etcd a config file of its
own with free client and peer ports (Milvus' ``etcd.config.path``), and every
other port a free start, so servers started at the same moment by parallel
test workers do not race for the package's fixed bases. Shared by the tests'
fixtures and the benchmarks.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from pathlib import Path

_GIVEN: set[int] = set()  # ports this process handed out (never twice)
_LOCK = threading.Lock()
# The package's start() changes the process's working directory to the
# server's folder around its Popen; two threads starting servers at once
# could launch one server in the other's folder (reading its config, its
# ports). Launches hold this lock; the wait for health does not.
_LAUNCH = threading.Lock()
START_TIMEOUT_S = 400  # two servers booting beside a busy test run on 2 cores took > 180 s
SLICES = 32  # the range below the ephemeral one, split by process


def _ephemeral() -> tuple[int, int]:
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port nothing listens on, for a server that binds it later.

    Not from the kernel's ephemeral range, which a port-0 bind draws from:
    between the choice and the server's bind, an outgoing connection (every
    gRPC client of a booting server makes some) could take it, and did: a
    second server's etcd failed "bind: address already in use" on such a
    port and the start timed out. Never one this process handed out before,
    and from a slice of the range of its own per process (two test workers
    starting servers at once); each is checked free when chosen."""
    lo_e, _ = _ephemeral()
    low, high = (10000, lo_e) if lo_e - 10000 >= 4096 else (1024, lo_e)
    span = (high - low) // SLICES
    base = low + (os.getpid() % SLICES) * span
    rng = random.Random()
    with _LOCK:
        for _ in range(2000):
            port = base + rng.randrange(span)
            if port in _GIVEN:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _GIVEN.add(port)
            return port
    raise RuntimeError(f"no free port in {base}-{base + span}")


def _bind(port: int):
    """Bind with SO_REUSEADDR, so a restarted server can take its old port
    back while it is in TIME_WAIT (the package's own check would move on)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None


def start(base_dir: Path, port: int | None = None, *, tick_ms: int | None = None):
    """A started ``milvus.MilvusServer`` with its data under ``base_dir`` on
    ``port`` (default: a free one), its embedded etcd on free ports too.

    ``tick_ms``: the proxy's time-tick interval (Milvus' default 200 ms). A
    Strong-consistency read waits for the tick after its request's timestamp,
    so the tests, which read right after each write, run on 20 ms; the
    benchmarks keep the default."""
    from milvus import MilvusServer

    base_dir = Path(base_dir)
    server = MilvusServer(wait_for_started=False)
    server.config.try_bind_port = _bind
    server.set_base_dir(str(base_dir))
    server.listen_port = port or free_port()
    etcd_yaml = base_dir / "etcd.yaml"
    etcd_state = base_dir / "etcd-ports.txt"
    if etcd_state.exists():  # a restart keeps its etcd ports (its data says where it listened)
        client, peer = map(int, etcd_state.read_text().split())
    else:
        client, peer = free_port(), free_port()
        base_dir.mkdir(parents=True, exist_ok=True)
        etcd_state.write_text(f"{client} {peer}")
    server.config.set("etcd_port", client)
    # Every other component port starts from a free one too: the package
    # starts each at a fixed base (rootcoord 53100, querycoord 19531, ...,
    # the health/metrics port 9091) and takes the first it can bind, then lets
    # go of it before Milvus binds it, so two servers started at the same
    # moment (two pytest-xdist workers) both took 53100 and one died.
    for key in [k for k in server.config.configurable_items if k.endswith("_port") and k not in ("etcd_port", "proxy_port")]:
        server.config.set(key, free_port())
    server.webservice_port = free_port()
    original = server.config.write_config

    def write_config() -> None:
        original()
        cfg = Path(server.config.base_data_dir) / "configs" / "milvus.yaml"
        etcd_yaml.write_text(
            "name: default\n"
            f"listen-client-urls: http://127.0.0.1:{client}\n"
            f"advertise-client-urls: http://127.0.0.1:{client}\n"
            f"listen-peer-urls: http://127.0.0.1:{peer}\n"
            f"initial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
            f"initial-cluster: default=http://127.0.0.1:{peer}\n"
        )
        text = cfg.read_text(encoding="utf-8")
        text = text.replace("\netcd:\n", f"\netcd:\n  config:\n    path: {etcd_yaml}\n", 1)
        if tick_ms is not None:
            text = text.replace("timeTickInterval: 200 #", f"timeTickInterval: {int(tick_ms)} #", 1)
        cfg.write_text(text, encoding="utf-8")

    server.config.write_config = write_config
    with _LAUNCH:
        cwd = os.getcwd()
        try:
            server.start()  # launches only (wait_for_started=False)
        finally:
            os.chdir(cwd)
    try:
        server.wait_started(timeout=START_TIMEOUT_S * 1000)
    except BaseException as exc:
        log = Path(server.config.base_data_dir) / "logs" / "milvus-stderr.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        server.stop()
        raise RuntimeError(f"Milvus server did not start: {exc}; its stderr ends:\n{tail}") from exc
    if port is not None and server.listen_port != port:
        server.stop()
        raise RuntimeError(f"Milvus server came up on {server.listen_port}, not {port}")
    return server
