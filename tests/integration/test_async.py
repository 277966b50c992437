"""Async: 200 concurrent asearch calls from one event loop give exactly the
sequential search's answers, on Milvus Lite and on a server, on a bounded
number of threads (measured while they run); aretrieve and arecommend equal
their sync calls; cancelled calls leave nothing half-done; close() stops the
pool."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from permrag.errors import ArgumentError, ConfigError
from permrag.search.aio import AsyncRunner

from ..conftest import open_backend

USERS = ["alice", "bob", "carol", "dave", "nobody"]
QUERIES = ["budget leave", "travel plans", "salary bands", "office snacks", "merger target", "note 7"]
N = 200


def build(backend: str, tmp_path, request, **options):
    rag = open_backend(backend, tmp_path / "h", request, encoder="hash", **options)
    rag.add_documents(
        [
            {"external_id": f"d{i}", "text": f"note {i}: {QUERIES[i % len(QUERIES)]} and {QUERIES[(i * 7) % len(QUERIES)]}", "attrs": {"level": ["public", "secret", "hr"][i % 3], "team": f"t{i % 4}"}}
            for i in range(240)
        ]
    )
    p = rag.policy
    for role, sel in (("staff", "level:public"), ("hr", "level:hr"), ("t1", "team:t1"), ("boss", "*")):
        p.add_role(role)
        p.grant(role, sel)
    p.deny("t1", "level:secret")
    p.assign_user("alice", "staff")
    p.assign_user("bob", "hr")
    p.assign_user("bob", "t1")
    p.assign_user("carol", "boss")
    p.assign_user("dave", "t1")
    return rag


def calls(n: int = N) -> list[tuple[str, str, int]]:
    return [(QUERIES[i % len(QUERIES)], USERS[i % len(USERS)], 1 + i % 10) for i in range(n)]


async def concurrently(rag, todo, mode: str) -> tuple[list, int, int]:
    """Run every call at once; return the answers, the most pool threads and the most threads of the process seen meanwhile."""
    peak_pool = peak_all = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak_pool, peak_all
        while not done.is_set():
            peak_pool = max(peak_pool, rag.aio.threads)
            peak_all = max(peak_all, threading.active_count())
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    out = await asyncio.gather(*(rag.asearch(q, user=u, k=k, mode=mode) for q, u, k in todo))
    done.set()
    await watcher
    return out, peak_pool, peak_all


@pytest.mark.parametrize("backend", ["lite", "server"])
@pytest.mark.slow  # a subprocess, a stress run or a timed wait: left out by make test-fast
def test_200_concurrent_asearch_equal_sequential_search_on_bounded_threads(backend, tmp_path, request, capsys) -> None:
    mode = "hybrid" if backend == "lite" else "dense"  # the test server (2.3) has no BM25
    # Session consistency: reads see this client's writes without waiting for the
    # server's next time tick on every search (Strong: 150 s for this test, measured)
    rag = build(backend, tmp_path, request, async_workers=4, consistency="Session")
    try:
        todo = calls()
        expected = [rag.search(q, user=u, k=k, mode=mode) for q, u, k in todo]
        before = threading.active_count()
        got, peak_pool, peak_all = asyncio.run(concurrently(rag, todo, mode))
        for e, g in zip(expected, got):
            assert [(h.row_id, h.text, h.policy_version) for h in g] == [(h.row_id, h.text, h.policy_version) for h in e]
            assert g.policy_version == e.policy_version
        assert any(expected) and not all(expected)  # some callers see rows, "nobody" sees none
        assert 1 <= peak_pool <= 4  # the pool, never a thread per call
        # Other threads that grow with load are the Milvus side's own bounded pools (Milvus Lite's
        # gRPC server pool: 3 more at 200 concurrent calls, measured); never one per call.
        assert peak_all - before <= 4 + 12
        with capsys.disabled():
            print(f"\n[{backend}] {N} concurrent asearch: pool threads peak {peak_pool} (limit 4); process threads {before} before, peak {peak_all}")
    finally:
        rag.close()


def test_aretrieve_and_arecommend_equal_their_sync_calls(tmp_path, request) -> None:
    rag = build("lite", tmp_path, request)
    try:
        vectors = rag.encoder.encode(["budget leave", "salary bands", "travel plans"])
        users = ["alice", "bob", "carol"]

        async def main():
            return await asyncio.gather(
                rag.aretrieve("budget leave", user="bob", k=4, candidates=12),
                rag.arecommend(vectors, users=users, k=5),
            )

        retrieved, recommended = asyncio.run(main())
        assert [h.external_id for h in retrieved] == [h.external_id for h in rag.retrieve("budget leave", user="bob", k=4, candidates=12)]
        sync = rag.recommend(vectors, users=users, k=5)
        assert {u: [h.row_id for h in hs] for u, hs in recommended.items()} == {u: [h.row_id for h in hs] for u, hs in sync.items()}
    finally:
        rag.close()


def test_async_errors_are_the_sync_errors(tmp_path, request) -> None:
    rag = build("lite", tmp_path, request)
    try:
        for bad in ({"k": 0}, {"mode": "fuzzy"}, {"user": ""}):
            args = {"user": "alice", **bad}
            with pytest.raises(ArgumentError) as sync_err:
                rag.search("budget", **args)
            with pytest.raises(ArgumentError) as async_err:
                asyncio.run(rag.asearch("budget", **args))
            assert str(async_err.value) == str(sync_err.value)
    finally:
        rag.close()


def test_cancelled_calls_leave_nothing_half_done(tmp_path, request) -> None:
    """With one worker, most of 60 calls are still queued when they are cancelled:
    those never run; every call that did run wrote its answer and its audit record."""
    rag = build("lite", tmp_path, request, async_workers=1)
    try:
        searches_before = rag.stats["searches"]
        audited_before = len(rag.audit_log(limit=100_000))

        async def main() -> int:
            tasks = [asyncio.create_task(rag.asearch(q, user=u, k=k)) for q, u, k in calls(60)]
            await asyncio.sleep(0.05)
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            await rag.asearch("budget leave", user="alice")  # queued after the rest: runs once the started ones are done
            return sum(isinstance(r, asyncio.CancelledError) for r in results)

        cancelled = asyncio.run(main())
        ran = rag.stats["searches"] - searches_before
        assert cancelled >= 30  # most never started
        # those that finished, the one running when cancel() was called, one more the worker
        # may start while the loop above cancels the tasks in turn, and the last one.
        # (task.cancel() cancels the queued call at once — search/aio.py; through
        # run_in_executor it waited for the next loop run, and 6 more calls started once)
        assert ran <= (60 - cancelled) + 1 + 1 + 1
        assert len(rag.audit_log(limit=100_000)) - audited_before == ran  # each search that ran is audited, whole
        assert [h.row_id for h in rag.search("salary bands", user="bob")] == [h.row_id for h in asyncio.run(rag.asearch("salary bands", user="bob"))]
    finally:
        rag.close()


def test_close_stops_the_pool_and_refuses_later_calls(tmp_path, request) -> None:
    rag = build("lite", tmp_path, request)
    asyncio.run(rag.asearch("budget", user="alice"))
    assert rag.aio.threads >= 1
    rag.close()
    assert rag.aio.threads == 0
    with pytest.raises(ConfigError):
        asyncio.run(rag.asearch("budget", user="alice"))


@pytest.mark.parametrize("workers", [0, -1, 1000, 2.5, True])
def test_bad_pool_sizes_are_refused(workers) -> None:
    with pytest.raises(ConfigError):
        AsyncRunner(workers)


def test_one_pool_serves_every_store_call(tmp_path, request) -> None:
    """Different async entry points share the store's pool (threads named after it)."""
    rag = build("lite", tmp_path, request, async_workers=2)
    try:
        vec = np.asarray(rag.encoder.encode(["budget"]))

        async def main():
            await asyncio.gather(*(rag.asearch("budget", user=u) for u in USERS), rag.arecommend(vec, users=["alice"]), rag.aretrieve("leave", user="bob"))

        asyncio.run(main())
        assert rag.aio.threads == 2
    finally:
        rag.close()


@pytest.mark.slow  # a subprocess, a stress run or a timed wait: left out by make test-fast
def test_the_readme_async_snippet_runs_as_written(tmp_path) -> None:
    import subprocess
    import sys

    from ..system.test_docs import blocks, env_for

    (code,) = blocks("async")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env_for(tmp_path, PERMRAG_ENCODER="hash"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "200 answers, all {'hr-leave'}"


def test_a_cancelled_queued_call_never_starts_even_before_the_loop_runs_again() -> None:
    """task.cancel() cancels a queued call at once: the worker, freed right after,
    does not start it even while the event loop is blocked (run_in_executor passed
    the cancellation on only at the loop's next run, and the call started)."""
    import time

    runner = AsyncRunner(1)
    gate, ran = threading.Event(), []

    async def main() -> None:
        first = asyncio.create_task(runner.run(gate.wait, 10))
        second = asyncio.create_task(runner.run(ran.append, "second"))
        await asyncio.sleep(0.05)  # both submitted; the first runs, the second waits
        second.cancel()
        gate.set()  # the worker is free now
        time.sleep(0.3)  # the loop is blocked: nothing it schedules runs meanwhile
        assert await first is True
        with pytest.raises(asyncio.CancelledError):
            await second

    try:
        asyncio.run(main())
    finally:
        runner.close()
    assert ran == []
