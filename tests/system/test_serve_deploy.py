"""``permrag serve`` in a deployment shape: the catalog on PostgreSQL, the
vectors on a real Milvus server, the SCIM server in a process of its own.
Every SCIM write (create, membership, deactivate, reactivate, rename,
member removal, delete) is held to the next search in THIS process, without
any explicit reload: the per-search version check must see it. Each answer
is compared with casbin enforcing the stored rules, document by document,
and with the documents the group → role → rule chain should give."""

from __future__ import annotations

import subprocess
import time
import uuid

import httpx
import pytest

from permrag import PermRAG

from ..system.test_serve_scim import DOCS, GROUP, PERMRAG, SECRET, USER, expected, free_port, ok, patch, scim_error


@pytest.fixture
def deployed(tmp_path, pg_url, milvus_server):
    base = tmp_path
    home, collection = base / "home", f"scim_{uuid.uuid4().hex[:10]}"
    options = ["--database-url", pg_url, "--milvus-uri", milvus_server, "--collection", collection]
    rag = PermRAG.open(home, encoder="hash", database_url=pg_url, milvus_uri=milvus_server, collection=collection)
    rag.add_documents(DOCS)
    rag.policy.add_role("eng-reader")
    rag.policy.grant("eng-reader", "dept:eng")
    (base / "scim-token").write_text(SECRET + "\n")
    port = free_port()
    proc = subprocess.Popen(
        [PERMRAG, *options, "--home", str(home), "serve", "--port", str(port), "--scim-token-file", str(base / "scim-token")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            httpx.get(server + "/healthz", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise AssertionError(f"permrag serve did not start: {proc.communicate()[1][-2000:]}") from None
            time.sleep(0.2)
    client = httpx.Client(base_url=server + "/scim/v2", headers={"Authorization": f"Bearer {SECRET}"}, timeout=30)
    yield {"rag": rag, "scim": client}
    client.close()
    rag.close()
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err[-2000:]


def found(rag: PermRAG, user: str) -> list[str]:
    """The next search here (no reload first), checked against casbin document by document."""
    got = sorted(h.document for h in rag.search("handbook leave travel", user=user, k=20, mode="dense"))
    enforcer = rag.enforcer()
    assert got == sorted(d["external_id"] for d in DOCS if enforcer.enforce(user, "default", rag.row(d["external_id"]), "read"))
    return got


def test_each_scim_write_holds_for_the_next_search_in_another_process(deployed) -> None:
    rag, scim = deployed["rag"], deployed["scim"]
    world = {"scim": scim}
    bob = ok(scim.post("/Users", json={"schemas": [USER], "userName": "bob@example.com", "externalId": "00u-bob", "active": True}), 201)
    uid = bob["id"]
    assert found(rag, uid) == []
    eng = ok(scim.post("/Groups", json={"schemas": [GROUP], "displayName": "Engineering", "members": [{"value": uid}]}), 201)
    rag.identity.assign_group(eng["id"], "eng-reader")
    assert found(rag, uid) == expected("eng")
    ok(patch(world, f"/Users/{uid}", {"op": "Replace", "path": "active", "value": "False"}))  # Entra's form
    assert found(rag, uid) == []
    ok(patch(world, f"/Users/{uid}", {"op": "replace", "value": {"active": True}}))  # Okta's form
    assert found(rag, uid) == expected("eng")
    renamed = ok(scim.put(f"/Users/{uid}", json={"schemas": [USER], "userName": "robert@example.com", "externalId": "00u-bob"}))
    assert renamed["userName"] == "robert@example.com" and found(rag, uid) == expected("eng")
    ok(patch(world, f"/Groups/{eng['id']}", {"op": "remove", "path": f'members[value eq "{uid}"]'}))
    assert found(rag, uid) == []
    ok(patch(world, f"/Groups/{eng['id']}", {"op": "Add", "path": "members", "value": [{"value": uid}]}))
    assert found(rag, uid) == expected("eng")
    ok(scim.delete(f"/Users/{uid}"), 204)
    scim_error(scim.get(f"/Users/{uid}"), 404)
    assert found(rag, uid) == []
