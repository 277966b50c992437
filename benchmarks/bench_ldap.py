"""LDAP directory sync at scale, from a real OpenLDAP slapd.

    python benchmarks/bench_ldap.py            # 100,000 users, 20,000 groups
    python benchmarks/bench_ldap.py --quick    # 10,000 users, 2,000 groups

The directory is generated as LDIF and loaded offline with ``slapadd`` (an
online ``ldapadd`` of 120,000 entries would measure slapd's write path, not
the sync), then served by ``slapd`` on a free port (tests/helpers/ldap_server.py:
mdb backend, ppolicy and refint overlays). Groups nest 4 deep (a tree: each
group in one group of the level above, as ``member`` values); each user is in
2–4 groups of the lowest level; 1 % of users are locked
(``pwdAccountLockedTime``). The sync reads as a service account with paged
searches of 1,000 entries, into a fresh catalog-only SQLite store.

Each sync runs in a child process of its own, so its peak memory
(``ru_maxrss``, resident set) is its own; the child reports it before
(imports and an open store) and after. Measured:

* the first sync (an empty store): reading every page, building the
  directory, applying it (one policy version);
* a sync with nothing changed (read + diff, nothing written);
* a sync after 1 % of the users changed groups (ldapmodify on the live
  server), applied.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import machine, save  # noqa: E402

LEVELS = (0.005, 0.045, 0.2)  # shares of the groups on the levels above the lowest


def directory_ldif(n_users: int, n_groups: int, seed: int = 7) -> tuple[str, dict[str, list[str]], int]:
    """The LDIF of the users and groups; group cn → member DNs (for the change step); membership count."""
    from tests.helpers.ldap_server import SUFFIX

    rng = random.Random(seed)
    sizes = [max(1, int(n_groups * s)) for s in LEVELS]
    sizes.append(n_groups - sum(sizes))
    levels, n = [], 0
    for size in sizes:
        levels.append([f"g{n + i}" for i in range(size)])
        n += size
    members: dict[str, list[str]] = {g: [] for lvl in levels for g in lvl}
    for upper, lower in zip(levels, levels[1:]):
        for g in lower:
            members[rng.choice(upper)].append(f"cn={g},ou=groups,{SUFFIX}")
    out = [f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n", f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n"]
    for i in range(n_users):
        dn = f"uid=u{i},ou=people,{SUFFIX}"
        lock = "pwdAccountLockedTime: 000001010000Z\n" if i % 100 == 0 else ""
        out.append(f"dn: {dn}\nobjectClass: inetOrgPerson\nuid: u{i}\ncn: User {i}\nsn: {i}\n{lock}")
        for g in rng.sample(levels[-1], rng.randint(2, 4)):
            members[g].append(dn)
    for g, ms in members.items():
        ms = ms or [f"uid=u0,ou=people,{SUFFIX}"]  # groupOfNames needs a member
        members[g] = ms
        out.append(f"dn: cn={g},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: {g}\n" + "".join(f"member: {m}\n" for m in ms))
    return "\n".join(out), members, sum(len(ms) for ms in members.values())


def change_ldif(members: dict[str, list[str]], n_users: int, seed: int = 11) -> tuple[str, int, int]:
    """Move 1 % of the users out of their lowest-level groups into other ones:
    (LDIF change records, memberships added, memberships removed)."""
    from tests.helpers.ldap_server import SUFFIX

    rng = random.Random(seed)
    before = {(m, g) for g, ms in members.items() for m in ms}
    users = {f"uid=u{i},ou=people,{SUFFIX}" for i in rng.sample(range(1, n_users), max(1, n_users // 100))}
    lowest = [g for g, ms in members.items() if not any(m.startswith("cn=") for m in ms)]
    records = []
    for g in lowest:
        gone = [m for m in members[g] if m in users]
        target = rng.choice(lowest)
        if not gone or len(gone) == len(members[g]) or target == g:
            continue
        add = [m for m in gone if m not in members[target]]
        records.append(f"dn: cn={g},ou=groups,{SUFFIX}\nchangetype: modify\ndelete: member\n" + "".join(f"member: {m}\n" for m in gone))
        members[g] = [m for m in members[g] if m not in gone]
        if add:
            records.append(f"dn: cn={target},ou=groups,{SUFFIX}\nchangetype: modify\nadd: member\n" + "".join(f"member: {m}\n" for m in add))
            members[target] += add
    after = {(m, g) for g, ms in members.items() for m in ms}
    return "\n".join(records), len(after - before), len(before - after)


def child(url: str, home: str, allow: bool) -> dict:
    """One sync in this process: times and peak resident memory."""
    from permrag import PermRAG
    from permrag.policy.ldap import LdapSource
    from tests.helpers.ldap_server import READER_DN, READER_PW, SUFFIX

    rag = PermRAG.open(home, catalog_only=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    got = rag.identity.read_ldap(LdapSource(url, SUFFIX, bind_dn=READER_DN, password=READER_PW, page_size=1000))
    t1 = time.perf_counter()
    report = rag.identity.sync(got.directory, allow_mass_removal=allow)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    d = got.directory
    out = {
        "read_s": t1 - t0, "apply_s": t2 - t1, "total_s": t2 - t0, "entries": got.entries, "pages": got.pages,
        "users": len(d.users), "groups": len(d.groups), "memberships": len(d.edges()), "inactive": len(d.inactive),
        "added": len(report.added), "removed": len(report.removed), "applied": report.applied, "policy_version": report.policy_version,
        "rss_before_mb": before / 1024, "rss_peak_mb": peak / 1024,
    }  # fmt: skip
    rag.close()
    return out


def run_child(url: str, home: Path, allow: bool = False) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", url, str(home)] + (["--allow"] if allow else []), capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"sync failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(r: dict) -> str:
    rows = [
        "| sync | entries | pages | read (s) | apply (s) | total (s) | entries/s | memberships added / removed | peak RSS (MB) | RSS before (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("first", "unchanged", "changed"):
        s = r[name]
        rows.append(
            f"| {name} | {s['entries']:,} | {s['pages']} | {s['read_s']:.1f} | {s['apply_s']:.1f} | {s['total_s']:.1f} | "
            f"{s['entries'] / s['read_s']:,.0f} | {s['added']:,} / {s['removed']:,} | {s['rss_peak_mb']:.0f} | {s['rss_before_mb']:.0f} |"
        )
    return (
        f"LDAP sync from slapd: {r['users']:,} users ({r['inactive']:,} locked), {r['groups']:,} groups, {r['memberships']:,} memberships "
        f"(slapadd load {r['load_s']:.1f} s; {r['changed_memberships']:,} memberships changed for the last row by ldapmodify, {r['modify_s']:.1f} s)\n\n"
        + "\n".join(rows)
        + f"\n\n{r['machine']}; load average at the end {', '.join(map(str, r['load_average']))} (a shared machine)"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--groups", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true", help="10,000 users, 2,000 groups")
    ap.add_argument("--child", nargs=2, metavar=("URL", "HOME"), help=argparse.SUPPRESS)
    ap.add_argument("--allow", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.allow)))
        return
    if args.quick:
        args.users, args.groups = 10_000, 2_000
    from tests.helpers.ldap_server import Slapd

    with tempfile.TemporaryDirectory() as tmp:
        text, members, n_members = directory_ldif(args.users, args.groups)
        (Path(tmp) / "directory.ldif").write_text(text)
        server = Slapd(Path(tmp) / "slapd")
        load_s = server.load(Path(tmp) / "directory.ldif")
        server.start()
        try:
            home = Path(tmp) / "home"
            r: dict = {"first": run_child(server.url, home)}
            r["unchanged"] = run_child(server.url, home)
            records, added, removed = change_ldif(members, args.users)
            t = time.perf_counter()
            server.modify(records, timeout=1800)
            modify_s = time.perf_counter() - t
            r["changed"] = run_child(server.url, home)
        finally:
            server.stop()
    first = r["first"]
    assert first["memberships"] == n_members and first["users"] == args.users and first["groups"] == args.groups, first
    assert not r["unchanged"]["applied"] and r["changed"]["applied"], r
    assert (r["changed"]["added"], r["changed"]["removed"]) == (added, removed), (r["changed"], added, removed)  # the LDIF's own count
    r.update(users=first["users"], groups=first["groups"], memberships=first["memberships"], inactive=first["inactive"],
             load_s=load_s, modify_s=modify_s, changed_memberships=added + removed, machine=machine(),
             load_average=[round(x, 2) for x in os.getloadavg()])  # fmt: skip
    out = table(r)
    print(out)
    save("ldap_sync", args.quick, r, out)


if __name__ == "__main__":
    main()
