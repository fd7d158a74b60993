"""Decontamination of stage 03 (paper §4.1): generated questions that match an MWPBench test question exactly
(after normalisation) or share a long word n-gram with one are removed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mathscale_utils.core.io import DataError
from mathscale_utils.data.benchmarks import FRESH_GAOKAO, MWPBENCH_DATASETS, load_mwpbench
from mathscale_utils.method.text_hashing import Words, ngram_hashes, normalize_text


@dataclass
class TestItem:
    """One benchmark test question."""

    __test__ = False  # not a pytest class

    id: str
    dataset: str
    question: str


class Decontaminator:
    """Exact match (after :func:`normalize_text`) and shared word n-grams against a fixed set of test questions.

    The test side is a sorted array of n-gram hashes with the test item of each; a generated question is looked
    up with one vectorised ``searchsorted``, so 200K generated x 15K test questions take seconds. A hash hit is
    confirmed on the words before it is reported (no false positive from a hash collision)."""

    def __init__(self, items: Sequence[TestItem], n: int = 13):
        self.items, self.n = list(items), n
        self.norm = [normalize_text(t.question) for t in self.items]
        self.exact: dict[str, int] = {}
        for i, s in enumerate(self.norm):
            if s:
                self.exact.setdefault(s, i)
        h, owner, _ = ngram_hashes([s.split() for s in self.norm], n)
        order = np.argsort(h, kind="stable")
        self.hashes, self.owner = h[order], owner[order]

    def check(self, questions: Sequence[str], ids: Sequence[str], chunk: int = 20_000) -> list[dict]:
        """One hit per contaminated question: {id, kind ("exact" | "ngram"), test_id, test_dataset, ngram, question}."""
        hits: list[dict] = []
        for c0 in range(0, len(questions), chunk):
            part = questions[c0 : c0 + chunk]
            hits += self.check_words(Words.of_questions(part), part, ids[c0 : c0 + chunk])
        return hits

    def check_words(self, words: Words, questions: Sequence[str], ids: Sequence[str]) -> list[dict]:
        """:meth:`check` for a block of questions already normalised and hashed (``Words.of_questions``)."""
        flagged: dict[int, dict] = {}
        for j in range(len(words.lengths)):
            t = self.exact.get(s := words.text(j)) if words.lengths[j] else None
            if t is not None:
                flagged[j] = self._hit(ids[j], questions[j], "exact", t, s)
        if len(self.hashes):
            h, doc, pos = words.ngrams(self.n)
            order = np.argsort(h)  # sorted keys: searchsorted walks the test hashes in order (cache-friendly)
            loc = np.empty_like(order)
            loc[order] = np.searchsorted(self.hashes, h[order])
            loc_c = np.minimum(loc, len(self.hashes) - 1)
            found = np.flatnonzero(self.hashes[loc_c] == h)
            for f in found.tolist():
                j = int(doc[f])
                if j in flagged:
                    continue
                a = int(words.starts[j]) + int(pos[f])
                gram = " ".join(words.flat[a : a + self.n])
                k = int(loc_c[f])
                while k < len(self.hashes) and self.hashes[k] == h[f]:  # confirm on the words
                    t = int(self.owner[k])
                    if f" {gram} " in f" {self.norm[t]} ":
                        flagged[j] = self._hit(ids[j], questions[j], "ngram", t, gram)
                        break
                    k += 1
        return [flagged[j] for j in sorted(flagged)]

    def _hit(self, gid: str, question: str, kind: str, t: int, shared: str) -> dict:
        item = self.items[t]
        return {
            "id": gid,
            "kind": kind,
            "test_id": item.id,
            "test_dataset": item.dataset,
            "ngram": shared,
            "question": question,
            "test_question": item.question,
        }


def load_test_questions(
    data_dir: str | Path | None,
    official_file: str | Path | None = None,
    datasets: Sequence[str] | None = None,
) -> tuple[list[TestItem], list[str]]:
    """MWPBench test questions (all ten datasets and Fresh-GaokaoMath-2023 unless narrowed), via
    ``data.load_mwpbench``; returns (items, notes on what is missing). A dataset whose files are absent is noted,
    not fatal: decontamination then covers what is available, and the card says so."""

    names = list(datasets) if datasets else [*MWPBENCH_DATASETS, FRESH_GAOKAO]
    items: list[TestItem] = []
    notes: list[str] = []
    for d in names:
        try:
            recs = load_mwpbench("test", data_dir, official_file=official_file, datasets=[d])
        except (DataError, OSError) as e:
            notes.append(f"{d}: not checked ({str(e).split(' (the shared data folder')[0]})")
            continue
        if not recs:
            notes.append(f"{d}: not available here")
        items.extend(TestItem(r.id, r.dataset, r.question) for r in recs)
    return items, notes


__all__ = ["TestItem", "Decontaminator", "load_test_questions"]
