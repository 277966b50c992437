"""Chunks as a store keeps them: sizes in the encoder's tokens, read back from the catalog."""

from __future__ import annotations

from permrag import PermRAG
from permrag.embed import HashEncoder


def test_store_chunks_in_tokens(tmp_path) -> None:
    rag = PermRAG.open(tmp_path / "h", encoder=HashEncoder(16), chunk_size=20, chunk_overlap=2, chunk_unit="tokens")
    try:
        ids = rag.add_documents([{"external_id": "d", "text": " ".join(f"w{i}" for i in range(100))}])
        recs = rag.rows(ids)
        assert len(recs) >= 5 and all(r.parent == "d" for r in recs)
    finally:
        rag.close()
