"""The layering of DESIGN.md, checked on the source (issue 11, point 2).

Every module under src/gencycle is parsed with `ast` (nothing is imported) and each of its
imports of gencycle — at module level or inside a function, absolute or relative, or a module
named in a string for importlib — is mapped to a layer. A module imports only its own layer and
the layers before it in LAYERS: the core (model, tokenizer, checkpoints, generation) never
imports a lifecycle stage, the model imports nothing else of gencycle, stages never import
workflows, and the entry points (cli, serve, demo) are imported by the CLI alone. The package
graph has no cycle, nor have the modules of the core (a lazy import that works around one counts).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "gencycle"

# (layer, top-level names under gencycle/): each layer imports itself and the layers above it only.
LAYERS = [
    ("model", {"model"}),                     # the lowest layer: knows nothing of files or decoding
    ("helpers", {"assets",                    # packaged model names -> paths; a leaf
                 "errors"}),                  # UserError / OptionError: what bad input raises
    ("tokenizer", {"tokenizer"}),
    ("checkpoints", {"checkpoints"}),         # the HF layout and GGUF -> Transformer
    ("generation", {"generation",
                    "inspection",             # model card and attention maps: reads a model
                    "compute"}),              # parameters, memory, FLOPs: reads a ModelConfig
    ("facade", {""}),                         # gencycle/__init__.py: re-exports the core
    ("stage", {"prompting", "adapters", "training", "evaluation", "alignment", "integrate",
               "embeddings",                  # sentence embeddings: integrate's, at the top level for now
               "data"}),                      # datasets (DialogSum) for adapting and evaluating
    ("workflow", {"workflows"}),
    ("entry", {"cli", "serve", "demo"}),      # demo: `python -m gencycle.demo`, the CLI's peer
]
CORE = {"model", "helpers", "tokenizer", "checkpoints", "generation", "facade"}
ENTRY_IMPORTERS = {"cli"}  # an entry point may be imported by the CLI (and itself), by nothing else

RANK = {layer: rank for rank, (layer, _) in enumerate(LAYERS)}
LAYER_OF = {name: layer for layer, names in LAYERS for name in names}


def module_name(path: str) -> str:
    """generation/decoding.py -> gencycle.generation.decoding; a package's __init__.py -> the package."""
    parts = ["gencycle", *Path(path).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top(module: str) -> str:
    """The top-level name under gencycle of a module ("" for the package itself)."""
    return module.split(".")[1] if "." in module else ""


def imports(path: str, source: str, modules: set[str]) -> list[tuple[str, int]]:
    """(imported gencycle module, line) for every import in a file's source: `from X import Y` counts
    as importing X.Y when that is a module, else X."""
    name = module_name(path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]

    def known(target: str) -> str:  # the closest enclosing module of a dotted name
        while target not in modules and "." in target:
            target = target.rpartition(".")[0]
        return target

    found = []
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.Import):
            found += [(known(a.name), node.lineno) for a in node.names if a.name.split(".")[0] == "gencycle"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "gencycle":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((full if full in modules else known(base), node.lineno))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules \
                and "." in node.value:  # importlib.import_module("gencycle.cli.evaluate") and the like
            found.append((node.value, node.lineno))
    return [(target, line) for target, line in found if target != name]


def graph(sources: dict[str, str]) -> dict[str, list[tuple[str, str, int]]]:
    """module -> [(imported module, file, line)] over a tree {path under gencycle/: source}."""
    modules = {module_name(path) for path in sources}
    return {module_name(path): [(target, path, line) for target, line in imports(path, source, modules)]
            for path, source in sources.items()}


def unplaced(sources: dict[str, str]) -> list[str]:
    """Top-level modules and packages that LAYERS does not name."""
    return sorted({f"gencycle/{path}" for path in sources if top(module_name(path)) not in LAYER_OF})


def layer_violations(sources: dict[str, str]) -> list[str]:
    problems = []
    for module, edges in graph(sources).items():
        mine = top(module)
        if mine not in LAYER_OF:
            continue  # reported by unplaced()
        for target, path, line in edges:
            theirs = top(target)
            if theirs not in LAYER_OF:
                continue
            low, high = LAYER_OF[mine], LAYER_OF[theirs]
            if RANK[high] > RANK[low]:
                problems.append(f"gencycle/{path}:{line} imports {target}: the {low} layer may not import "
                                f"the {high} layer")
            elif high == "entry" and theirs != mine and mine not in ENTRY_IMPORTERS:
                problems.append(f"gencycle/{path}:{line} imports {target}: only the CLI imports an entry point")
    return problems


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of a directed graph, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def package_cycle(sources: dict[str, str]) -> list[str] | None:
    """A cycle among gencycle's top-level packages and modules (gencycle itself named "gencycle")."""
    edges = {}
    for module, imported in graph(sources).items():
        for target, _, _ in imported:
            if top(target) != top(module):
                edges.setdefault(top(module) or "gencycle", set()).add(top(target) or "gencycle")
    return find_cycle(edges)


def core_module_cycle(sources: dict[str, str]) -> list[str] | None:
    """A cycle among the modules of the core, lazy imports included."""
    def in_core(module: str) -> bool:
        return LAYER_OF.get(top(module)) in CORE

    edges = {module: {target for target, _, _ in imported if in_core(target)}
             for module, imported in graph(sources).items() if in_core(module)}
    return find_cycle(edges)


def read_tree(root: Path = SOURCE) -> dict[str, str]:
    return {path.relative_to(root).as_posix(): path.read_text() for path in sorted(root.rglob("*.py"))}


# ------------------------------------------------------------------ the checker catches planted violations
CLEAN = {
    "__init__.py": "from .generation import generate\nfrom .model import Transformer\n",
    "assets.py": "",
    "model/__init__.py": "from .transformer import Transformer\n",
    "model/transformer.py": "import torch\n",
    "checkpoints/__init__.py": "from .. import assets\nfrom ..model.transformer import Transformer\n",
    "generation/__init__.py": "from .decoding import generate\n",
    "generation/state.py": "",
    "generation/beam.py": "from .state import DecodeState\n",
    "generation/decoding.py": "from .beam import beam_search\nfrom .state import DecodeState\n"
                              "def load():\n    from ..checkpoints import load_model\n",
    "training/__init__.py": "from gencycle import generate\nfrom gencycle.model import Transformer\n",
    "workflows/__init__.py": "from gencycle.training import loop\n",
    "cli/__init__.py": "import importlib\nMODULES = ['gencycle.cli.run']\n",
    "cli/run.py": "from ..workflows import finetune\nfrom .. import demo\n",
    "demo.py": "from gencycle.workflows import finetune\n",
}


def planted(files: dict[str, str]) -> dict[str, str]:
    return {**CLEAN, **files}


def test_the_clean_tree_passes():
    assert (unplaced(CLEAN), layer_violations(CLEAN), package_cycle(CLEAN), core_module_cycle(CLEAN)) == \
        ([], [], None, None)


def test_a_lazy_import_of_generation_in_the_model_is_caught():
    lazy = "import torch\n\ndef generate(self):\n    from ..generation import generate\n"
    tree = planted({"model/transformer.py": lazy})
    assert layer_violations(tree) == ["gencycle/model/transformer.py:4 imports gencycle.generation: "
                                      "the model layer may not import the generation layer"]


def test_core_importing_a_stage_and_stages_importing_workflows_are_caught():
    tree = planted({"generation/beam.py": "from .state import DecodeState\nimport gencycle.training\n",
                    "checkpoints/gguf.py": "def f():\n    from ..training import loop\n",
                    "training/loop.py": "from gencycle.workflows import steps\n",
                    "tokenizer.py": "x = 'gencycle.cli.run'\n",
                    "inspection.py": "def card():\n    from gencycle import load_model\n"})
    problems = "\n".join(layer_violations(tree))
    assert "gencycle/generation/beam.py:2 imports gencycle.training: the generation layer may not import the " \
           "stage layer" in problems
    assert "gencycle/checkpoints/gguf.py:2 imports gencycle.training.loop: the checkpoints layer" in problems
    assert "gencycle/training/loop.py:1 imports gencycle.workflows: the stage layer may not import the " \
           "workflow layer" in problems
    assert "gencycle/tokenizer.py:1 imports gencycle.cli.run: the tokenizer layer may not import the entry" \
           in problems
    assert "gencycle/inspection.py:2 imports gencycle: the generation layer may not import the facade" in problems
    assert "gencycle/demo.py" not in problems  # the demo may import workflows


def test_importing_the_cli_or_the_demo_from_elsewhere_is_caught():
    tree = planted({"demo.py": "from gencycle.cli import run\n", "serve/__init__.py": "from .. import demo\n"})
    assert layer_violations(tree) == [
        "gencycle/demo.py:1 imports gencycle.cli.run: only the CLI imports an entry point",
        "gencycle/serve/__init__.py:1 imports gencycle.demo: only the CLI imports an entry point"]


def test_cycles_are_caught_lazy_imports_included():
    tree = planted({"checkpoints/__init__.py": "from ..generation import generate\n"})
    assert package_cycle(tree) == ["checkpoints", "generation", "checkpoints"]
    lazy = "from .state import DecodeState\n\ndef f():\n    from .decoding import x\n"
    tree = planted({"generation/beam.py": lazy})
    assert package_cycle(tree) is None
    cycle = core_module_cycle(tree)
    assert cycle[0] == cycle[-1] and set(cycle) == {"gencycle.generation.beam", "gencycle.generation.decoding"}
    assert package_cycle(planted({"training/__init__.py": "from ..cli import run\n"})) == \
        ["cli", "demo", "workflows", "training", "cli"]


def test_a_module_without_a_layer_is_caught():
    assert unplaced(planted({"gadgets.py": "import torch\n"})) == ["gencycle/gadgets.py"]


# ------------------------------------------------------------------ gencycle itself
@pytest.fixture(scope="module")
def tree():
    return read_tree()


def test_every_top_level_module_has_a_layer(tree):
    assert "generation/decoding.py" in tree and unplaced(tree) == []


def test_each_layer_imports_only_the_layers_above_it(tree):
    assert layer_violations(tree) == []


def test_no_import_cycle_among_packages(tree):
    assert package_cycle(tree) is None


def test_no_import_cycle_among_the_modules_of_the_core(tree):
    assert core_module_cycle(tree) is None
