"""The package's shape: subpackages in layers that import only downward, no import circle, short modules, one stage
registry, formatting as ruff writes it."""

import ast
from pathlib import Path

import networkx as nx

import mathscale_utils
from mathscale_utils.core.artifacts import STAGES, RunDir
from mathscale_utils.runs import stages

PKG = Path(mathscale_utils.__file__).resolve().parent
# Bottom to top. A module may import its own subpackage and any subpackage of a lower layer; subpackages that share
# a layer are independent of each other. The same order is drawn in mathscale_utils/__init__.py.
LAYERS: list[tuple[str, ...]] = [
    ("core",),
    ("grading", "inference"),
    ("data",),
    ("method",),
    ("training", "evaluation"),
    ("reporting",),
    ("runs",),
]
RANK = {sub: rank for rank, subs in enumerate(LAYERS) for sub in subs}
MODULES = {
    ".".join(p.relative_to(PKG).with_suffix("").parts): p for p in PKG.rglob("*.py") if p.stem != "__init__"
}
MAX_LINES = 600
MAX_FMT_SKIPS = 10  # only for real tables, where one entry per line would hide the table's shape


def imports(path: Path) -> set[str]:
    """Package modules ("sub.module") a module imports anywhere: functions and `if TYPE_CHECKING:` blocks included."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mathscale_utils"):
            parts = node.module.split(".")[1:]
            if len(parts) == 2:
                out.add(".".join(parts))
            else:  # from mathscale_utils.sub import module  /  from mathscale_utils import sub
                base = ".".join(parts)
                out |= {f"{base}.{a.name}" if base else a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {
                ".".join(a.name.split(".")[1:3]) for a in node.names if a.name.startswith("mathscale_utils.")
            }
    return out


def test_every_module_lives_in_a_layer():
    assert {p.parent.name for p in MODULES.values()} == set(RANK)
    assert all(len(name.split(".")) == 2 for name in MODULES), "one level of subpackages"


def test_imports_name_modules_that_exist():
    for name, path in MODULES.items():
        assert imports(path) <= MODULES.keys(), name


def test_no_import_goes_up_or_sideways():
    wrong = []
    for name, path in MODULES.items():
        sub = name.split(".")[0]
        for dep in imports(path):
            dep_sub = dep.split(".")[0]
            if dep_sub != sub and RANK[dep_sub] >= RANK[sub]:
                wrong.append(f"{name} imports {dep} ({dep_sub} is not below {sub})")
    assert wrong == []


def test_no_import_circle():
    g = nx.DiGraph([(m, dep) for m, p in MODULES.items() for dep in imports(p) if dep != m])
    assert list(nx.simple_cycles(g)) == []


def test_the_top_level_package_imports_nothing():
    tree = ast.parse((PKG / "__init__.py").read_text(encoding="utf-8"))
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]


def test_every_subpackage_says_what_it_is_for():
    for sub in RANK:
        doc = ast.get_docstring(ast.parse((PKG / sub / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc) > 60, sub


def test_the_method_package_lists_the_paper_steps_in_order():
    doc = ast.get_docstring(ast.parse((PKG / "method" / "__init__.py").read_text(encoding="utf-8")))
    steps = ["concepts", "graph", "compose", "generate", "filters", "dataset_card"]
    where = [doc.index(f"``{s}``") for s in steps]
    assert where == sorted(where)
    assert {f"method.{s}" for s in steps} <= MODULES.keys()


def test_no_module_over_600_lines():
    long = {
        m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_formatting_is_left_to_ruff():
    skips = {m: n for m, p in MODULES.items() if (n := p.read_text(encoding="utf-8").count("# fmt: skip"))}
    assert sum(skips.values()) <= MAX_FMT_SKIPS, skips


def test_one_registry_serves_chain_notebooks_and_stage_functions():
    notebooks = sorted(p.name for p in (PKG.parent / "notebooks").glob("*.ipynb"))
    assert [s.notebook for s in STAGES] == notebooks
    run = RunDir("x")
    for s in STAGES:
        assert callable(getattr(stages, s.name)), s.name
        assert all(isinstance(getattr(run, o), Path) for o in (s.summary, *s.outputs)), s.id
        source = (PKG.parent / "notebooks" / s.notebook).read_text(encoding="utf-8")
        assert f"stages.{s.name}(P" in source, f"notebook {s.notebook} must call stages.{s.name}(P)"
