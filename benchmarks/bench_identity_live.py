"""Identity as a live service: SCIM provisioning through ``permrag serve``.

    python benchmarks/bench_identity_live.py            # 10,000 users, 2,000 groups over SCIM
    python benchmarks/bench_identity_live.py --quick    # 1,000 users, 200 groups

A ``permrag serve`` subprocess on a fresh store (SQLite, or ``--database-url``)
takes, over real HTTP with ``--clients`` concurrent clients:

* provisioning: every user (``POST /Users``), then every group with its
  members (``POST /Groups``, 5 users each): requests per second;
* a lookup by ``userName`` (``GET /Users?filter=userName eq "…"``, what
  providers ask before creating a user): p50 / p99;
* a membership change → the next correct search in another process (this
  one, on the same home): a ``PATCH`` adding a user to a group that holds a
  department's reader role, then searches until the user finds exactly that
  department's documents; then a ``PATCH`` removing the user, until it finds
  nothing. p50 / p99 over ``--trials`` changes of each kind; every answer is
  compared with the documents of the department (the brute force).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, save  # noqa: E402

from permrag import PermRAG  # noqa: E402

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SECRET = "bench-" + "x" * 40
DEPTS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(home: Path, token: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = str(Path(sys.executable).parent / "permrag")
    proc = subprocess.Popen([exe, "serve", "--home", str(home), "--port", str(port), "--scim-token-file", str(token)], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/scim/v2"
    deadline = time.time() + 120
    while True:
        try:
            httpx.get(url.rsplit("/scim", 1)[0] + "/healthz", timeout=1).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"permrag serve did not start: {proc.communicate()[1][-2000:]}") from None
            time.sleep(0.2)


def provision(url: str, n_users: int, n_groups: int, clients: int) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {SECRET}"}
    pool = [httpx.Client(base_url=url, headers=headers, timeout=120) for _ in range(clients)]

    def post(args: tuple[int, str, dict]) -> str:
        i, path, body = args
        res = pool[i % clients].post(path, json=body)
        if res.status_code != 201:
            raise SystemExit(f"{path}: {res.status_code} {res.text[:300]}")
        return res.json()["id"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        users = list(ex.map(post, [(i, "/Users", {"schemas": [USER], "userName": f"u{i}@corp", "externalId": f"u{i}"}) for i in range(n_users)]))
    t1 = time.perf_counter()
    groups = [(j, "/Groups", {"schemas": [GROUP], "displayName": f"team-{j}", "members": [{"value": users[(j * 5 + k) % n_users], "type": "User"} for k in range(5)]}) for j in range(n_groups)]
    with ThreadPoolExecutor(clients) as ex:
        list(ex.map(post, groups))
    t2 = time.perf_counter()
    for c in pool:
        c.close()
    return {"users": n_users, "groups": n_groups, "users_s": t1 - t0, "groups_s": t2 - t1, "users_per_s": n_users / (t1 - t0), "groups_per_s": n_groups / (t2 - t1)}


def lookups(url: str, n_users: int, n: int = 100) -> list[float]:
    """Seconds of ``GET /Users?filter=userName eq "…"`` (what Okta and Entra ask before a create)."""
    out = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {SECRET}"}, timeout=60) as client:
        for i in range(n):
            name = f"u{(i * 7919) % n_users}@corp"
            t = time.perf_counter()
            res = client.get("/Users", params={"filter": f'userName eq "{name}"'})
            out.append(time.perf_counter() - t)
            assert [u["userName"] for u in res.json()["Resources"]] == [name], res.text
    return out


def until(rag: PermRAG, user: str, want: list[str], started: float, limit: float = 30.0) -> float:
    """Seconds from ``started`` to the first search as ``user`` that finds exactly ``want``."""
    while True:
        rag.refresh()
        got = sorted({h.document for h in rag.search("policy handbook", user=user, k=50, mode="dense")})
        if got == want:
            return time.perf_counter() - started
        if time.perf_counter() - started > limit:
            raise SystemExit(f"search as {user} still finds {got[:5]} after {limit} s (want {want[:5]})")


def changes(rag: PermRAG, url: str, trials: int, n_users: int) -> dict[str, list[float]]:
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {SECRET}"}, timeout=60)
    readers = []
    for d in range(DEPTS):
        res = client.post("/Groups", json={"schemas": [GROUP], "displayName": f"dept-{d}-readers"})
        readers.append(res.json()["id"])
        rag.identity.assign_group(readers[-1], f"reader-{d}")
    docs = {d: sorted(f"d{d}-{i}" for i in range(5)) for d in range(DEPTS)}
    out: dict[str, list[float]] = {"add": [], "remove": []}
    for t in range(trials):
        user, d = f"u{(t * 7919) % n_users}", t % DEPTS
        until(rag, user, [], time.perf_counter())
        started = time.perf_counter()
        res = client.patch(f"/Groups/{readers[d]}", json={"schemas": [PATCH], "Operations": [{"op": "add", "path": "members", "value": [{"value": user}]}]})
        assert res.status_code == 200, res.text
        out["add"].append(until(rag, user, docs[d], started))
        started = time.perf_counter()
        body = {"schemas": [PATCH], "Operations": [{"op": "remove", "path": f'members[value eq "{user}"]'}]}
        assert client.patch(f"/Groups/{readers[d]}", json=body).status_code == 200
        out["remove"].append(until(rag, user, [], started))
    client.close()
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--groups", type=int, default=None)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args(argv)
    n_users = args.users or (1000 if args.quick else 10_000)
    n_groups = args.groups or (200 if args.quick else 2_000)
    base = Path(tempfile.mkdtemp(prefix="bench-live-"))
    home = base / "home"
    rag = PermRAG.open(home, encoder="hash", **({"database_url": args.database_url} if args.database_url else {}))
    rag.add_documents([{"external_id": f"d{d}-{i}", "text": f"policy handbook {d} part {i}", "attrs": {"dept": str(d)}} for d in range(DEPTS) for i in range(5)])
    for d in range(DEPTS):
        rag.policy.add_role(f"reader-{d}")
        rag.policy.grant(f"reader-{d}", f"dept:{d}")
    (base / "token").write_text(SECRET)
    proc, url = start(home, base / "token")
    try:
        prov = provision(url, n_users, n_groups, args.clients)
        found = lookups(url, n_users)
        lat = changes(rag, url, args.trials, n_users)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
        rag.close()
    rows = {k: {"p50_ms": 1000 * statistics.median(v), "p99_ms": 1000 * pct(v, 0.99), "n": len(v)} for k, v in lat.items()}
    lookup = {"p50_ms": 1000 * statistics.median(found), "p99_ms": 1000 * pct(found, 0.99), "n": len(found)}
    data = {"machine": machine(), "database": "postgresql" if args.database_url else "sqlite", "clients": args.clients, "provisioning": prov,
            "lookup_by_username": lookup, "change_to_search": rows}  # fmt: skip
    text = "\n".join(
        [
            f"# SCIM provisioning through permrag serve ({machine()}, {data['database']}, {args.clients} clients)",
            "",
            "| step | count | seconds | per second |",
            "|---|---:|---:|---:|",
            f"| POST /Users | {n_users:,} | {prov['users_s']:.1f} | {prov['users_per_s']:.0f} |",
            f"| POST /Groups (5 members each) | {n_groups:,} | {prov['groups_s']:.1f} | {prov['groups_per_s']:.0f} |",
            "",
            f"GET /Users?filter=userName eq …: p50 {lookup['p50_ms']:.1f} ms, p99 {lookup['p99_ms']:.1f} ms ({lookup['n']} lookups at {n_users:,} users)",
            "",
            "| membership PATCH → correct search in another process | p50 ms | p99 ms | trials |",
            "|---|---:|---:|---:|",
            *(f"| {k} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['n']} |" for k, r in rows.items()),
        ]
    )
    print(text)
    save("identity_live_scim", args.quick, data, text)


if __name__ == "__main__":
    main()
