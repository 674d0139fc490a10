"""Caption text: the one normalisation rule, the special tokens, and the vocabulary.

Every caption goes through `normalise` exactly once, in prepare; vocab, training targets and the
evaluation references all read the normalised text, so they cannot disagree. The rule:
HTML entities unescaped (`&amp;` -> `&`), Unicode NFKD then accents stripped (`café` -> `cafe`),
lower-cased, every character that is not a letter, digit or apostrophe inside a word becomes a
space (punctuation dropped, as the Karpathy split's `tokens` do; letters of any script count, so
`smørrebrød` stays one word), whitespace collapsed.
"""
from __future__ import annotations

import html
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pipeline.errors import InputError

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)  # their indices are 0, 1, 2, 3 in every vocabulary

_NOT_WORD = re.compile(r"(?:[^\w']|_)+")  # \w: Unicode letters and digits (and _, dropped too)
_LOOSE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")


def normalise(caption: str) -> str:
    """Return the caption in canonical form: lower-case words separated by single spaces."""
    text = html.unescape(caption)
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = text.lower().replace("\u2019", "'")
    text = _NOT_WORD.sub(" ", text)
    text = _LOOSE_APOSTROPHE.sub(" ", text)
    return " ".join(text.split())


def tokenize(caption: str) -> list[str]:
    """Split a normalised caption into words."""
    return caption.split()


@dataclass(frozen=True)
class Vocabulary:
    """Word <-> index mapping; the special tokens come first, in SPECIAL_TOKENS order."""

    words: tuple[str, ...]
    pad: ClassVar[int] = SPECIAL_TOKENS.index(PAD)
    start: ClassVar[int] = SPECIAL_TOKENS.index(START)
    end: ClassVar[int] = SPECIAL_TOKENS.index(END)
    unk: ClassVar[int] = SPECIAL_TOKENS.index(UNK)

    def __post_init__(self) -> None:
        if tuple(self.words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary must start with {SPECIAL_TOKENS}, got {self.words[:4]}")
        object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.words)})

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self._index  # type: ignore[attr-defined]

    def index(self, word: str) -> int:
        return self._index.get(word, self.unk)  # type: ignore[attr-defined]

    def encode(self, words: Sequence[str], max_length: int | None = None) -> list[int]:
        """[START, w1..wn, END] as indices, keeping at most `max_length` words."""
        words = words[:max_length] if max_length is not None else words
        return [self.start, *(self.index(w) for w in words), self.end]

    def decode(self, indices: Iterable[int]) -> list[str]:
        """Words up to the first END, without START or PAD."""
        words = []
        for i in indices:
            i = int(i)
            if i == self.end:
                break
            if i in (self.start, self.pad):
                continue
            words.append(self.words[i])
        return words

    def to_json(self, path: Path, counts: dict[str, int] | None = None, **extra: object) -> None:
        """Write the vocabulary as JSON: {"words": [...], "counts": {...}, ...}."""
        payload = {"words": list(self.words), "counts": counts or {}, **extra}
        Path(path).write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def from_json(cls, path: Path) -> "Vocabulary":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: vocabulary not found; run `dvc repro vocab` first")
        try:
            return cls(tuple(json.loads(path.read_text(encoding="utf-8"))["words"]))
        except (ValueError, KeyError, TypeError) as error:  # not JSON, no "words", or not a vocabulary
            raise InputError(f"{path} is not a vocabulary file ({type(error).__name__}: {error}); "
                             "rerun `dvc repro vocab`") from error
