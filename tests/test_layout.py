"""The package's shape: no import circle, short modules, one config layer under every stage, one stage registry."""

import ast
from pathlib import Path

import networkx as nx

from mathscale_utils import stages
from mathscale_utils.artifacts import STAGES, RunDir

PKG = Path(__file__).resolve().parent.parent / "mathscale_utils"
MODULES = {p.stem: p for p in PKG.glob("*.py") if p.stem != "__init__"}
FOUNDATION = {"params", "config", "artifacts", "templates", "io"}  # the config layer and what it stands on


def _imports(path: Path) -> set[str]:
    """Package modules a module imports anywhere (functions included), except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}  # fmt: skip
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "mathscale_utils":
                out |= {a.name for a in node.names}
            elif node.module.startswith("mathscale_utils."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("mathscale_utils.")}
    return out & MODULES.keys()


def test_no_import_circle():
    g = nx.DiGraph([(m, dep) for m, p in MODULES.items() for dep in _imports(p) if dep != m])
    assert list(nx.simple_cycles(g)) == []


def test_the_config_layer_imports_no_stage():
    for name in FOUNDATION:
        assert _imports(MODULES[name]) <= FOUNDATION, name


def test_no_module_over_600_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert long == {}


def test_one_registry_serves_chain_notebooks_and_stage_functions():
    notebooks = sorted(p.name for p in (PKG.parent / "notebooks").glob("*.ipynb"))
    assert [s.notebook for s in STAGES] == notebooks
    run = RunDir("x")
    for s in STAGES:
        assert callable(getattr(stages, s.name)), s.name
        assert all(isinstance(getattr(run, o), Path) for o in (s.summary, *s.outputs)), s.id
        source = (PKG.parent / "notebooks" / s.notebook).read_text(encoding="utf-8")
        assert f"stages.{s.name}(P" in source, f"notebook {s.notebook} must call stages.{s.name}(P)"
