"""The layering the README's code map describes, read from the source: no module below the orchestration
layer (cli, runner, from_run, stages) imports it, and the package has no import cycle, counting imports
inside functions and ``importlib.import_module`` with a literal name."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORCHESTRATION = ("pipeline.cli", "pipeline.runner", "pipeline.from_run", "pipeline.__main__", "pipeline.stages")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((ROOT / "pipeline").rglob("*.py"))}


def imported(path: Path) -> set[str]:
    """The pipeline modules ``path`` imports anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
            names.add(node.args[0].value)
    return {name for name in names if name in MODULES}


def orchestration(name: str) -> bool:
    return any(name == top or name.startswith(f"{top}.") for top in ORCHESTRATION)


def test_nothing_below_the_orchestration_layer_imports_it():
    offenders = {name: sorted(filter(orchestration, imported(path)))
                 for name, path in MODULES.items() if not orchestration(name)}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_package_has_no_import_cycle():
    # a package's own modules import it first anyway: that edge is no cycle
    graph = {name: {m for m in imported(path) if not name.startswith(f"{m}.") and m != name}
             for name, path in MODULES.items() if not orchestration(name)}
    cycles, state = [], {}

    def visit(name: str, stack: list[str]) -> None:
        state[name] = "open"
        for other in sorted(graph.get(name, ())):
            if state.get(other) == "open":
                cycles.append(stack[stack.index(other):] + [name, other] if other in stack else [name, other])
            elif other in graph and other not in state:
                visit(other, [*stack, name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycles, " | ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("concept, where", [("export target", "pipeline/targets.py"),
                                            ("runtime", "pipeline/runtimes/__init__.py")])
def test_each_concept_is_registered_through_one_registry(concept, where):
    assert f'Registry("{concept}"' in (ROOT / where).read_text()


def test_report_keys_are_held_by_the_code_and_documented():
    from pipeline import report

    documented = (ROOT / "docs" / "report-schema.md").read_text()
    assert all(f'"{key}"' in documented for key in report.TOP_LEVEL_KEYS)
    written = set()
    for path in MODULES.values():  # every report.data["<key>"] = ... in the package
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)
                    and isinstance(node.slice, ast.Constant) and ast.unparse(node.value).endswith("report.data")):
                written.add(node.slice.value)
    assert written and written <= set(report.TOP_LEVEL_KEYS), written - set(report.TOP_LEVEL_KEYS)
    fresh = report.Report(ROOT, "m").data
    assert set(fresh) <= set(report.TOP_LEVEL_KEYS) and fresh["schema_version"] == report.SCHEMA_VERSION


def test_a_run_without_training_does_not_import_lightning():
    # Lightning (with torchmetrics) takes seconds to import: only the train stage may import it.
    code = ("import sys; from pipeline import runner, stages; stages.contracts(); "
            "from pipeline.stages import export, check, convert, parity; "
            "from pipeline.datasets import arrays, image_folder, mnist, model_inputs, series, synthetic, table; "
            "assert 'pytorch_lightning' not in sys.modules, 'Lightning imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
