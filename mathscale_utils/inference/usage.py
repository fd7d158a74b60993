"""The LLM usage files of a run (``usage/<stage>.json``): what each stage asked and spent, over all its sessions, and
what the whole run spent, which ``llm.budget_usd`` caps.

One file per stage, rewritten by the session (an ``llm.LLM``) that runs the stage::

    {"stage": ..., "model": ..., "base_url": ..., "run_spent_usd": ...,
     "total":   {requests, attempts, retries, cache_hits, failures, prompt_tokens, completion_tokens,
                 ok, failed, budget_stopped, cost_usd, batch_cost_usd, unclosed_usd, sessions},
     "session": {the same counters for the latest session, budget_exhausted, open, reserved_usd}}

"requests" were sent (once each, however many "attempts"), "failures" of them got no usable answer; "ok", "failed"
and "budget_stopped" count the results the calls returned (cache hits included): with a text, with an error (a
down endpoint, an HTTP error, a Batch API job still running), and with "budget exceeded" (never sent).

While a session runs ("open": true), "reserved_usd" covers the estimated cost of the requests it has in flight
(twice that, at most the budget left), written before they are sent. A session killed with kill -9 never closes its
file: the next session of the stage adds that reservation to the total as ``unclosed_usd`` (those requests may have
been paid, and are sent again), and any other stage counts an open file's reservation as spent.
"""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path

from mathscale_utils.core.io import DataError, read_json, write_json

COUNTERS = ("requests", "attempts", "retries", "cache_hits", "failures", "prompt_tokens", "completion_tokens")
COUNTERS += ("ok", "failed", "budget_stopped")  # a session's counts (see above); then its money:
MONEY = ("cost_usd", "batch_cost_usd", "unclosed_usd")  # the totals that count against the budget


def read_usage(path: Path) -> dict:
    """A usage file, or {} (with a warning) when it cannot be read."""
    try:
        doc = read_json(path)
    except DataError as e:
        warnings.warn(f"{path}: unreadable usage file, its spend is not counted ({e})", stacklevel=3)
        return {}
    return doc if isinstance(doc, dict) else {}


def spent(total: dict) -> float:
    """Money a usage total counts against the budget: live and Batch API cost, unclosed in-flight estimates."""
    return sum(float(total.get(k) or 0.0) for k in MONEY)


def file_spent(doc: dict) -> float:
    """A usage file's spend, with the reservation of a session still open (running, or killed)."""
    s = doc.get("session") or {}
    return spent(doc.get("total") or {}) + (float(s.get("reserved_usd") or 0.0) if s.get("open") else 0.0)


class UsageFile:
    """One stage's usage file as one session sees it: the earlier sessions' total, and how much spend the file
    on disk covers (so that the session knows when it must write before sending). path None: nothing is kept."""

    def __init__(self, path: Path | None):
        self.path = path
        self.prior = self._load_prior() if path is not None and path.exists() else {}
        self.covered = 0.0  # this session's cost + reservation, as last written
        self.written_at = 0.0  # time.monotonic() of the last write
        self._lock = threading.Lock()

    def _load_prior(self) -> dict:
        """The total of earlier sessions; a session that never closed adds its reservation as unclosed_usd."""
        assert self.path is not None
        doc = read_usage(self.path)
        prior, s = dict(doc.get("total") or {}), doc.get("session") or {}
        if s.get("open"):
            prior["unclosed_usd"] = float(prior.get("unclosed_usd") or 0.0) + float(
                s.get("reserved_usd") or 0.0
            )
        return prior

    def spent_before(self) -> float:
        """Spend of the earlier sessions of this stage and of every other stage of the run (the same folder)."""
        if self.path is None:
            return 0.0
        others = [f for f in sorted(self.path.parent.glob("*.json")) if f != self.path]
        return spent(self.prior) + sum(file_spent(read_usage(f)) for f in others)

    def totals(self, session: dict) -> dict:
        """Every session of the stage, this one included (numbers in `session` added to the earlier total)."""
        prior = self.prior
        total = {k: prior.get(k, 0) + v for k, v in session.items() if type(v) in (int, float)}
        total.update({k: round(v, 6) for k, v in total.items() if isinstance(v, float)})
        total.update(unclosed_usd=prior.get("unclosed_usd", 0.0), sessions=prior.get("sessions", 0) + 1)
        return total

    def write(self, head: dict, usage: dict, session_cost: float, reserved: float, closing: bool) -> None:
        """Rewrite the file from LLM.usage(): open with `reserved` dollars held for requests in flight, or closed."""
        if self.path is None:
            return
        with self._lock:
            session = {k: v for k, v in usage.items() if k not in ("total", "run_spent_usd")}
            session.update(open=not closing, reserved_usd=0.0 if closing else reserved)
            doc = {
                **head,
                "run_spent_usd": usage["run_spent_usd"],
                "total": usage["total"],
                "session": session,
            }
            write_json(self.path, doc)
            self.covered = session_cost + (0.0 if closing else reserved)
            self.written_at = time.monotonic()
