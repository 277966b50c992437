"""``permrag demo``: a small enterprise knowledge base, several users, one screen.

The documents and the policy in this folder were written for permrag: four
departments, three classification levels, English and Chinese text, and one
contract shared with a single person.
"""

from __future__ import annotations

import shutil
import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .. import PermRAG
from ..toolkit import load_jsonl

USERS = ["alice", "bob", "carol", "dave", "erin", "li"]
QUESTIONS = [
    "What is the parental leave policy?",
    "How do we deploy to production?",
    "What was revenue last quarter and what is the forecast?",
    "What are the salary bands?",
    "What does the Acme Logistics contract say about termination?",
    "年假有多少天？",
]


def data_path(name: str) -> Path:
    return Path(str(resources.files(__package__).joinpath(name)))


def run_demo(
    home: Path,
    console: Console,
    *,
    encoder: str | None = None,
    k: int = 3,
    database_url: str | None = None,
    milvus_uri: str | None = None,
    milvus_token: str | None = None,
) -> dict:
    """Build the demo store under ``home`` (replacing it) and print what each user gets.

    With ``database_url`` / ``milvus_uri`` the demo's catalog and vectors go
    to those servers instead (its documents and policy replace earlier demo runs' there).
    """
    t0 = time.perf_counter()
    if home.exists():
        shutil.rmtree(home)
    rag = PermRAG.open(home, encoder=encoder, database_url=database_url, milvus_uri=milvus_uri, milvus_token=milvus_token)
    try:
        docs = load_jsonl(data_path("kb.jsonl"))
        titles = {d["external_id"]: d["attrs"]["title"] for d in docs}
        console.print(f"[bold]permrag demo[/bold] — home {home}")
        console.print(f"Loading the embedding model and ingesting {len(docs)} documents …")
        rag.add_documents(docs, replace=True)
        rag.policy.import_csv(data_path("policy.csv"), replace=True)
        roles = Table("user", "roles (inherited)", "rows visible", title="Who is who")
        for u in USERS + ["auditor"]:
            held = ", ".join(rag.policy.roles_of(u, implicit=True)) or "(none: a user called like a role holds nothing by that)"
            roles.add_row(u, held, f"{len(rag.visible(u))} of {len(docs)}")
        console.print(roles)
        results: dict = {}
        for q in QUESTIONS:
            t = Table("user", f"top {k} results they may read", title=f"Q: {q}", show_lines=True)
            for u in USERS:
                hits = rag.search(q, user=u, k=k, mode="auto")
                results[(q, u)] = [h.external_id for h in hits]
                t.add_row(u, "\n".join(f"{titles.get(h.external_id, h.external_id)}  [dim]({h.external_id})[/dim]" for h in hits) or "[dim](nothing)[/dim]")
            console.print(t)
        console.print("[bold]Why?[/bold]")
        for u, ext in (("carol", "legal-acme-contract"), ("alice", "eng-keys"), ("bob", "hr-salaries"), ("dave", "fin-q3")):
            console.print(" • " + str(rag.explain(u, ext)))
        console.print("[bold]Revocation is immediate:[/bold] removing carol's share of the Acme contract …")
        rag.policy.revoke("carol-shared", "doc:legal-acme-contract")
        after = [h.external_id for h in rag.search(QUESTIONS[4], user="carol", k=k)]
        console.print(f" • carol now gets: {', '.join(after) or '(nothing)'} (policy version {rag.policy_version})")
        results["after-revoke"] = after
        console.print(f"[dim]done in {time.perf_counter() - t0:.1f} s; every search is in the audit log (permrag --home {home} audit).[/dim]")
        return results
    finally:
        rag.close()
