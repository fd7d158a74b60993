"""One question's journey through a finished run: seed -> concepts -> graph neighbourhood -> walk -> new question ->
training example -> evaluated answer, as a markdown page built only from the run's own artifacts.

    python -m mathscale_utils.reporting.journey outputs/quickstart docs/journey.md

It follows one generated pair back to the seed that was its first few-shot example, so every step shown is a real
row of a real file: concepts.jsonl, concept_graph.graphml, compositions.jsonl, generation shards, mathscaleqa.jsonl,
the adapter's before/after answers and predictions.jsonl.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import networkx as nx

from mathscale_utils.core.artifacts import RunDir
from mathscale_utils.core.io import DataError, iter_jsonl, read_json, read_jsonl, write_text
from mathscale_utils.core.templates import alpaca_prompt
from mathscale_utils.method.graph import kp_id, topic_id


def _rows(path: Path) -> list[dict]:
    return read_jsonl(path) if path.exists() else []


def _json(path: Path) -> dict:
    return read_json(path) if path.exists() else {}


def _first(paths: Iterable[Path], pred: Callable[[dict], bool]) -> dict | None:
    """The first row of these JSONL files that pred accepts, read as a stream (paper-scale files hold millions)."""
    for path in paths:
        if path.exists():
            for _, row in iter_jsonl(path):
                if pred(row):
                    return row
    return None


def _pick_pair(run: RunDir) -> tuple[dict, dict]:
    """The first generated pair kept in mathscaleqa.jsonl and its generation record (the prompt's shot ids)."""
    pair = _first([run.mathscaleqa], lambda r: r.get("source") == "generated")
    if pair is None:
        raise DataError(f"{run.mathscaleqa}: no generated pair to follow (run stage 03 first)")
    shards = sorted(run.generation.glob("shard-*.jsonl"))
    record = _first(shards, lambda r: r.get("composition_id") == pair["composition_id"])
    return pair, record or {}


def _quote(text: str | None, limit: int = 1200) -> str:
    text = (text or "").strip()
    if len(text) > limit:
        text = text[:limit].rstrip() + " …"
    return "\n".join("> " + line if line else ">" for line in text.splitlines()) or "> (empty)"


def _neighbourhood(G: nx.Graph, node: str, k: int = 6) -> list[str]:
    """Markdown bullet lines: the node's strongest neighbours of each type, by co-occurrence count."""
    lines = []
    for kind, label in (("topic", "topics"), ("kp", "knowledge points")):
        nbrs = [(G[node][v]["count"], G.nodes[v]["label"]) for v in G[node] if G.nodes[v]["type"] == kind]
        nbrs.sort(key=lambda x: (-x[0], x[1]))
        shown = ", ".join(f"{name} ({c})" for c, name in nbrs[:k]) or "none"
        more = f" and {len(nbrs) - k} more" if len(nbrs) > k else ""
        lines.append(f"- {len(nbrs)} neighbouring {label}: {shown}{more}")
    return lines


def _walk_steps(G: nx.Graph, comp: dict) -> list[str]:
    """The composition in walk order, with the co-occurrence count of every step the walk took."""
    nodes = [topic_id(t) for t in comp["topics"]] + [kp_id(k) for k in comp["knowledge_points"]]
    lines = [f"1. start at topic **{comp['topics'][0]}**"]
    for i, (a, b) in enumerate(itertools.pairwise(nodes), start=2):
        kind = "topic" if b.startswith("T::") else "knowledge point"
        count = G[a][b]["count"] if G.has_edge(a, b) else None
        how = f"co-occurred in {count} seed question(s)" if count else "reached from an earlier topic"
        lines.append(f"{i}. step to {kind} **{b[3:]}** ({how})")
    return lines


def journey_markdown(run_dir: str | Path) -> str:
    """The whole page for one run directory."""
    run = RunDir(run_dir)
    pair, record = _pick_pair(run)
    seeds = {str(r["seed_id"]): r for r in read_jsonl(run.concepts)}
    seed = seeds.get(str((record.get("shot_ids") or [None])[0])) or next(iter(seeds.values()))
    G = nx.read_graphml(run.graph)
    comp = _first([run.compositions], lambda c: c.get("id") == pair["composition_id"]) or pair
    manifest = _json(run.manifest)
    teacher = pair.get("teacher_model") or manifest.get("params", {}).get("llm", {}).get("model")
    start = topic_id(comp["topics"][0])

    out = [
        "# One question's journey through MathScale",
        "",
        f"Every block below is copied from the files of one real run, `{run.root.name}` (teacher `{teacher}`), "
        f"by `python -m mathscale_utils.reporting.journey {run.root} <page>`. It follows one generated question back to "
        "the seed question the teacher was shown as its first example, then forward to the student.",
        "",
        "## 1. A seed question (notebook 01)",
        "",
        f"Seed `{seed['seed_id']}` ({seed.get('source')}):",
        "",
        _quote(seed["question"]),
        "",
        "## 2. Its concepts (notebook 01, `concepts.jsonl`)",
        "",
        "The teacher named these topics and knowledge points; the frequency filter kept the ones below "
        "(the raw lists are in the row too).",
        "",
        f"- topics: {', '.join(seed['topics']) or '(none kept)'}",
        f"- knowledge points: {', '.join(seed['knowledge_points']) or '(none kept)'}",
        "",
        "## 3. The graph neighbourhood (notebook 02, `concept_graph.graphml`)",
        "",
        f"The walk below starts at topic **{start[3:]}**. In the concept graph it has these neighbours "
        "(the number is how many seed questions they share):",
        "",
        *(_neighbourhood(G, start) if start in G else ["- (the topic is not in the graph)"]),
        "",
        "## 4. The random walk (notebook 02, `compositions.jsonl`)",
        "",
        f"Composition `{pair['composition_id']}`: 1-2 steps on the topic graph, "
        "one step to a knowledge point, then 0-4 steps on the knowledge-point graph, each step drawn in proportion "
        "to the co-occurrence count.",
        "",
        *_walk_steps(G, comp),
        "",
        "## 5. The new question (notebook 03, `mathscaleqa.jsonl`)",
        "",
        f"The teacher saw the composition and {len(record.get('shot_ids') or [])} seed example(s) "
        f"({', '.join(map(str, record.get('shot_ids') or [])) or 'none'}) chosen by knowledge-point Jaccard "
        f"similarity, and wrote (pair `{pair['id']}`, answer `{pair.get('answer')}`):",
        "",
        _quote(pair["question"]),
        "",
        "Solution:",
        "",
        _quote(pair["solution"]),
        "",
        "## 6. The training example (notebook 04)",
        "",
        "The student is trained on the evaluation template with the solution as the response; the loss covers the "
        "response only. With `prompt_format: chat` (the CPU default) the same text before the response is sent as "
        "one user message in the model's chat template, as stage 05 asks it.",
        "",
        "```text",
        alpaca_prompt(pair["question"]) + " " + pair["solution"].strip(),
        "```",
        "",
    ]
    out += _student_section(run)
    return "\n".join(out).rstrip() + "\n"


def _student_section(run: RunDir) -> list[str]:
    out = []
    before_after = _rows(run.before_after)
    c = _json(run.training_card)
    if c:
        out += [
            f"The LoRA adapter trained {c.get('steps')} steps on {c.get('n_examples')} examples of "
            f"`{c.get('base_model')}`."
        ]
    if before_after:
        r = before_after[0]
        out += [
            "",
            "A question held out of training, answered by the student before and after training:",
            "",
            _quote(r.get("question"), 600),
            "",
            f"Reference answer: `{r.get('reference')}`. Before (base model):",
            "",
            _quote(r.get("base"), 600),
            "",
            "After (with the adapter):",
            "",
            _quote(r.get("tuned"), 600),
        ]
    preds = _rows(run.predictions)
    out += ["", "## 7. An evaluated answer (notebook 05, `predictions.jsonl`)", ""]
    if not preds:
        return out + ["(stage 05 has not run for this run directory)"]
    p = next((r for r in preds if r.get("paper_correct")), preds[0])
    metrics = _json(run.metrics)
    out += [
        f"The fine-tuned student (`{p.get('model')}`) on MWPBench item `{p['id']}` ({p['dataset']}):",
        "",
        _quote(p["question"], 800),
        "",
        "Its answer (end):",
        "",
        _quote((p.get("completion") or "")[-800:], 800),
        "",
        f"Extracted `{p.get('extracted')}`, gold `{p.get('gold')}`: the paper's judge says "
        f"{'correct' if p.get('paper_correct') else 'wrong'}, the strict judge "
        f"{'correct' if p.get('strict_correct') else 'wrong'}.",
    ]
    if metrics:
        pj = metrics.get("paper", {})
        out += [
            "",
            f"Over the {metrics.get('n_items')} evaluated items: micro {pj.get('micro', 0):.1f}%, "
            f"macro {pj.get('macro', 0):.1f}% (paper's judge).",
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mathscale_utils.reporting.journey", description=__doc__.split("\n")[0]
    )
    ap.add_argument("run_dir", help="a run directory, e.g. outputs/quickstart")
    ap.add_argument("out", nargs="?", help="markdown file to write (default: print)")
    args = ap.parse_args(argv)
    try:
        page = journey_markdown(args.run_dir)
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.out:
        write_text(Path(args.out), page)
    else:
        print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
