"""Text as the stage-03 filters compare it: normalised words (NFKC, lower case, no punctuation) and stable 64-bit
hashes of words and word n-grams, shared by decontamination (long n-grams) and near-duplicate removal (shingles).
A block of questions is normalised and its words hashed once (:class:`Words`) for both filters."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_NONWORD = re.compile(r"[^\w\s]|_")
_SPACES = re.compile(r"\s+")
_BASE = np.uint64(1099511628211)  # FNV prime: odd, large


def normalize_text(s: str) -> str:
    """For matching: NFKC, lower case, every non-alphanumeric character (punctuation, symbols) -> space, collapsed."""
    s = unicodedata.normalize("NFKC", s or "").lower()
    return _SPACES.sub(" ", _NONWORD.sub(" ", s)).strip()


def _normalized_block(questions: Sequence[str]) -> str:
    """normalize_text of every question, joined by newlines, before the spaces are collapsed: one pass over the
    block (each question's own newlines become spaces first, which its normalisation would collapse anyway; NFKC,
    lower() and the punctuation rule act per character, and a newline composes with nothing, so no question affects
    another)."""
    big = "\n".join((q or "").replace("\n", " ") for q in questions)
    return _NONWORD.sub(" ", unicodedata.normalize("NFKC", big).lower())


def normalized_words(questions: Sequence[str]) -> list[list[str]]:
    """``normalize_text(q).split()`` for every question."""
    return [p.split() for p in _normalized_block(questions).split("\n")] if questions else []


def stable_hash(text: str) -> int:
    """A signed 64-bit hash of a string that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


@dataclass
class Words:
    """A block of questions as normalised words: all words in one list (``flat``, question j's at
    flat[starts[j] : starts[j] + lengths[j]]) and the stable hash of every word, questions concatenated."""

    flat: list[str]
    starts: np.ndarray  # int64, where each question's words begin in flat
    lengths: np.ndarray  # int64, words per question
    hashes: np.ndarray  # uint64, one per word of the questions, in order

    @property
    def toks(self) -> list[list[str]]:
        f = self.flat
        return [f[a : a + n] for a, n in zip(self.starts.tolist(), self.lengths.tolist(), strict=True)]

    def text(self, j: int) -> str:
        """Question j normalised (normalize_text)."""
        a = int(self.starts[j])
        return " ".join(self.flat[a : a + int(self.lengths[j])])

    @classmethod
    def of(cls, toks: Sequence[Sequence[str]]) -> Words:
        lengths = np.fromiter((len(d) for d in toks), dtype=np.int64, count=len(toks))
        flat = [w for d in toks for w in d]
        starts = np.cumsum(lengths) - lengths
        return cls(flat, starts, lengths, _hash_words(flat, None)[0])

    @classmethod
    def of_questions(cls, questions: Sequence[str]) -> Words:
        """Normalise and hash a block of questions: one normalised text, split once, with a marker between
        questions (a control character that normalisation removes, so no word can be one)."""
        if not questions:
            return cls.of([])
        flat = _normalized_block(questions).replace("\n", f" {_MARK} ").split()
        hashes, mark = _hash_words(flat, _MARK)
        at = np.flatnonzero(mark)
        ends = np.concatenate([at, [len(flat)]])
        starts = np.concatenate([[0], at + 1])
        return cls(flat, starts, ends - starts, hashes)

    def subset(self, keep: Sequence[int]) -> Words:
        """The words of the questions keep (ascending)."""
        keep = np.asarray(keep, dtype=np.int64)
        owner = np.repeat(np.arange(len(self.lengths)), self.lengths)
        sel = np.zeros(len(self.lengths), dtype=bool)
        sel[keep] = True
        return Words(self.flat, self.starts[keep], self.lengths[keep], self.hashes[sel[owner]])

    def ngrams(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """64-bit hashes of every word n-gram of every question: (hashes, question index, start position): a
        polynomial rolling hash over the concatenated words; windows crossing a question boundary are dropped, so
        questions shorter than n contribute nothing."""
        words, lengths = self.hashes, self.lengths
        total = len(words)
        if total < n:
            e = np.empty(0, dtype=np.int64)
            return np.empty(0, dtype=np.uint64), e, e
        m = total - n + 1
        h = np.zeros(m, dtype=np.uint64)
        for j in range(n):
            h *= _BASE
            h += words[j : j + m]
        doc_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        idx = np.flatnonzero(doc_of[:m] == doc_of[n - 1 :])
        return h[idx], doc_of[idx], idx - starts[doc_of[idx]]


_MARK = "\x01"


def _hash_words(flat: list[str], mark: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(stable hash of every word that is not `mark`, where the marks are): blake2b once per distinct word (pandas'
    factorize finds them). Python's own string hash changes with every process, which made MinHash estimates, and
    so near-duplicate removal, differ between runs."""
    import pandas as pd

    codes, uniq = pd.factorize(np.array(flat, dtype=object))
    per_word = np.fromiter((stable_hash(w) for w in uniq), dtype=np.int64, count=len(uniq)).view(np.uint64)
    is_mark = codes == (uniq.tolist().index(mark) if mark is not None and mark in uniq else -1)
    return per_word[codes[~is_mark]], is_mark


def ngram_hashes(docs: Sequence[Sequence[str]], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Words.ngrams for docs given as word lists."""
    return Words.of([list(d) for d in docs]).ngrams(n)


__all__ = ["normalize_text", "normalized_words", "stable_hash", "Words", "ngram_hashes"]
