"""The spend ledger: what one stage session asked and spent, the budget it must stay under, and the run's usage
files (``usage/<stage>.json``) that carry both across stages and sessions.

    ledger = SpendLedger(cfg, "03_generate", run_dir / "usage" / "03_generate.json")
    if ledger.reserve(ledger.estimate_usd(request)):   # False once llm.budget_usd would be passed
        ...send it...; ledger.count("prompt_tokens", 120); ledger.release(estimate)
    ledger.usage()                                     # this session's counts, the stage's total, the run's spend

``llm.budget_usd`` caps what the whole run pays: every stage and every session, the Batch API's replies included.
One file per stage, rewritten by the session (a ``SpendLedger``, held by ``llm.LLM``) that runs the stage::

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
from collections.abc import Iterable
from pathlib import Path

from mathscale_utils.core.io import DataError, read_json, write_json
from mathscale_utils.core.llm_config import LLMConfig
from mathscale_utils.inference.chat import ChatRequest, ChatResult

COUNTERS = ("requests", "attempts", "retries", "cache_hits", "failures", "prompt_tokens", "completion_tokens")
COUNTERS += ("ok", "failed", "budget_stopped")  # a session's counts (see above); then its money:
MONEY = ("cost_usd", "batch_cost_usd", "unclosed_usd")  # the totals that count against the budget
BUDGET_ERROR = "budget exceeded"
_WRITE_EVERY_S = 1.0  # while answers arrive, the usage file is rewritten at most this often


class BudgetExceeded(UserWarning):
    """Warned once when cfg.budget_usd stops new requests; those get error "budget exceeded"."""


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
        """Rewrite the file from SpendLedger.usage(): open with `reserved` dollars held for requests in flight, or closed."""
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


class SpendLedger:
    """One stage session's counters and spend, held against ``cfg.budget_usd`` with every earlier session and every
    other stage of the run (the usage files beside usage_path). usage_path None: counted in memory only."""

    def __init__(self, cfg: LLMConfig, stage: str, usage_path: Path | None):
        self.cfg, self.stage = cfg, stage
        self.n: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.batch_cost = 0.0  # Batch API replies collected in this session (batch.py reports them)
        self.file = UsageFile(usage_path)
        self.earlier_usd = self.file.spent_before()  # earlier sessions of every stage of the run
        self.inflight_usd = 0.0  # estimated cost of the requests in flight now
        self.budget_exhausted = False

    def count(self, counter: str, n: int = 1) -> None:
        self.n[counter] += n

    def tally(self, results: Iterable[ChatResult]) -> None:
        """Count the results a call returns: ok, stopped by the budget, failed."""
        for r in results:
            kind = "ok" if r.error is None else "budget_stopped" if r.error == BUDGET_ERROR else "failed"
            self.n[kind] += 1

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """Live price of so many tokens, in dollars."""
        p, c = self.cfg.price_prompt_per_1m, self.cfg.price_completion_per_1m
        return (prompt_tokens * p + completion_tokens * c) / 1e6

    def session_cost(self) -> float:
        return self.cost(self.n["prompt_tokens"], self.n["completion_tokens"]) + self.batch_cost

    def estimate_usd(self, req: ChatRequest) -> float:
        """A conservative guess before sending: 3 characters per prompt token, every allowed output token."""
        return self.cost(sum(len(str(m.get("content", ""))) + 16 for m in req.messages) / 3, req.max_tokens)

    def add_batch_cost(self, usd: float) -> None:
        """Count the price of Batch API replies collected now (batch.py) in this session's spend."""
        self.batch_cost += usd

    def spent_usd(self) -> float:
        """What counts against cfg.budget_usd now: earlier sessions of every stage of this run (the usage dir),
        this session's live and Batch API cost, and the estimated cost of the requests in flight."""
        return self.earlier_usd + self.session_cost() + self.inflight_usd

    def refresh(self) -> None:
        """Read the other stages' spend again (another stage may have spent since this session began)."""
        self.earlier_usd = self.file.spent_before()

    def usage(self) -> dict:
        """This session's counts (requests sent, HTTP attempts, retries, cache hits, failures, tokens, cost; ok /
        failed / budget_stopped results), "total" over every session of this stage (sessions, unclosed_usd: the
        in-flight estimates of sessions killed before closing) and run_spent_usd (what the budget counts)."""
        cost = self.cost(self.n["prompt_tokens"], self.n["completion_tokens"])
        session = {**self.n, "cost_usd": round(cost, 6), "batch_cost_usd": round(self.batch_cost, 6)}
        return {
            **session,
            "budget_exhausted": self.budget_exhausted,
            "total": self.file.totals(session),
            "run_spent_usd": round(self.spent_usd(), 6),
        }

    def reserve(self, est: float) -> bool:
        """True if a request estimated at `est` may go out under cfg.budget_usd (spent + in flight + this one); the
        usage file then holds its estimate before it is sent. Pair with release(est) once it is answered."""
        budget = self.cfg.budget_usd
        if budget is not None and not self.budget_exhausted:
            spent = self.spent_usd()
            if spent + est > budget:
                self.budget_exhausted = True
                msg = f"{self.stage}: budget ${budget:g} reached (spent ${spent:.4f} in this run); no more requests"
                warnings.warn(BudgetExceeded(msg), stacklevel=3)
        if self.budget_exhausted:
            return False
        self.inflight_usd += est
        if self.session_cost() + self.inflight_usd > self.file.covered:
            self.write()  # reserves twice what is in flight: about one write per `concurrency` requests
        return True

    def release(self, est: float) -> None:
        """The request reserved with `est` is answered or given up: its tokens, if any, were counted."""
        self.inflight_usd -= est

    def write_if_due(self) -> None:
        """Rewrite the usage file if the last write is older than a second (called as answers arrive)."""
        if time.monotonic() - self.file.written_at > _WRITE_EVERY_S:
            self.write()

    def write(self, closing: bool = False) -> None:
        """Rewrite the usage file; while open, reserve twice the estimated cost in flight (at most the budget left),
        so that requests sent before the next write are covered too."""
        reserved = 2 * self.inflight_usd
        if self.cfg.budget_usd is not None:
            left = self.cfg.budget_usd - self.earlier_usd - self.session_cost()
            reserved = max(self.inflight_usd, min(reserved, left))
        head = {"stage": self.stage, "model": self.cfg.model, "base_url": self.cfg.base_url}
        self.file.write(head, self.usage(), self.session_cost(), reserved, closing)
