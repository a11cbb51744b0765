"""The package's shape: no import cycle, heavy frameworks imported only when used, one owner for
the manifest and one spelling of error locations."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO_ROOT / "compiler"
PACKAGE = "tritonize"
# What `tritonize --help`, `validate` and importing any module must not pull in (seconds of import
# time and gigabytes of memory each).
HEAVY = ("torch", "onnxruntime", "transformers", "modelopt")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PACKAGE, *parts])


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py")) if "__pycache__" not in p.parts}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(tree: ast.Module):
    """Import statements run at import time: module level, not under `if TYPE_CHECKING`."""
    pending = list(tree.body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            pending.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            pending.extend(node.body + node.orelse + node.finalbody + [h for x in node.handlers for h in x.body])


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _top_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                # `from pkg import submodule` imports the submodule; `from mod import name` the module.
                targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin for a in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return path[path.index(child):] + [child]
            if child not in state and (cycle := visit(child)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def _run(code: str) -> list[str]:
    """Run code in a fresh interpreter; return the heavy modules it left imported."""
    probe = textwrap.dedent(code) + textwrap.dedent(f"""
        import sys
        print("HEAVY=" + ",".join(sorted(m for m in {HEAVY!r} if m in sys.modules)))
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("HEAVY=")][-1]
    return [m for m in line.removeprefix("HEAVY=").split(",") if m]


def test_importing_every_module_imports_no_heavy_framework():
    names = sorted(name for name in _modules() if not name.endswith(".__main__"))  # __main__ runs the CLI
    assert _run(f"import importlib\nfor name in {names!r}:\n    importlib.import_module(name)\n") == []


def test_help_and_validate_stay_light(tmp_path: Path):
    repository = tmp_path / "repo"
    (repository / "echo" / "1").mkdir(parents=True)
    (repository / "echo" / "1" / "model.py").write_text("class TritonPythonModel:\n    pass\n")
    (repository / "echo" / "config.pbtxt").write_text(
        'name: "echo"\nbackend: "python"\nmax_batch_size: 0\n'
        'input { name: "X" data_type: TYPE_FP32 dims: [ 1 ] }\noutput { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }\n')
    heavy = _run(f"""
        import contextlib, io
        from tritonize.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["--help"]) == 0
            assert main(["validate", {str(repository)!r}]) == 0, "validate failed"
    """)
    assert heavy == []


def test_no_module_outside_the_manifest_reads_its_file():
    """tritonize.manifest owns tritonize.manifest.json: nobody else opens it or parses its JSON."""
    offenders = []
    for name, path in _modules().items():
        if name == f"{PACKAGE}.manifest":
            continue
        text = path.read_text()
        if "MANIFEST_NAME" in text and ("json.load" in text or "json.dump" in text):
            offenders.append(name)
        if '"tritonize.manifest.json"' in text:
            offenders.append(name)
    assert offenders == []


@pytest.mark.parametrize("path", sorted(p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts),
                         ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_errors_are_located_by_loc_not_by_field_strings(path: Path):
    """One spelling of error locations: `loc=(...)` tuples (errors.py), never `field="models.x"`."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and _is_error_call(node):
            assert "field" not in {k.arg for k in node.keywords}, f"{path.name}:{node.lineno}: an error located with field="


def _is_error_call(node: ast.Call) -> bool:
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    return name.endswith(("Error", "Failed", "Missing", "Dependency"))
