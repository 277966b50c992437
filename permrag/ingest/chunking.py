"""Split long documents into overlapping chunks that keep their parent."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Chunker:
    """Character-based chunks of at most ``size`` characters, ``overlap`` shared
    with the previous chunk, cut at whitespace where one is near."""

    size: int = 1000
    overlap: int = 100

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.overlap < self.size:
            raise ConfigError(f"chunk size {self.size} / overlap {self.overlap}: need size >= 1 and 0 <= overlap < size")

    def split(self, text: str) -> list[str]:
        if len(text) <= self.size:
            return [text]
        chunks = []
        start = 0
        while start < len(text):
            end = min(len(text), start + self.size)
            if end < len(text):
                cut = text.rfind(" ", start + self.size // 2, end)
                if cut > start:
                    end = cut
            chunks.append(text[start:end].strip())
            if end >= len(text):
                break
            start = max(end - self.overlap, start + 1)
        return [c for c in chunks if c]
