"""Import edges: cli -> app (pipeline, deploy) -> methods -> core, with export and latency injected.

Every `import` statement of every module (those inside functions too; `if TYPE_CHECKING:` blocks are
types only and skipped) is an edge; each edge must be allowed by the table below. The checker is tested
on a forbidden edge, and every module is imported in a subprocess (no import errors, no cycles, and the
core and the methods load no runtime library).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"jaxnas": "jaxnas", "export": "jaxnas.export", "latency": "jaxnas.latency"}

APP = {"jaxnas.pipeline", "jaxnas.deploy", "jaxnas.quickstart"}
# Schema modules (pydantic sections, no runtime): the experiment config composes them.
SCHEMAS = {"jaxnas.export.config", "jaxnas.latency.config"}
# Latency modules that are data and arithmetic only: a method may read a table, a space or an imported
# TF-NAS pickle with them; it gets predictors, tables and measurements from the injected oracle.
LATENCY_DATA = {"jaxnas.latency.table", "jaxnas.latency.spaces", "jaxnas.latency.imports", "jaxnas.latency.stats",
                "jaxnas.latency.fingerprint", "jaxnas.latency.config"}
RUNTIME_LIBS = {"onnxruntime", "tensorflow", "tensorrt", "ai_edge_litert", "tflite_runtime", "jax2onnx", "tf2onnx",
                "onnx", "torch"}

ALLOWED = {
    "cli": {"cli", "app", "methods", "core", "export", "latency", "runtime"},
    "app": {"app", "methods", "core", "export", "latency", "runtime"},
    "methods": {"methods", "core"},
    "export": {"export", "core", "runtime"},
    "latency": {"latency", "export", "core", "runtime"},
    "runtime": {"runtime", "core"},
    "core": {"core"},
}
RUNTIME_LIB_LAYERS = {"export", "latency", "runtime"}
# The data package reads image folders and tfds datasets with TensorFlow (lazily): a data library there.
# The weight importer reads torch.save files with torch.load when torch is installed (lazily; the same).
LIB_EXCEPTIONS = {("jaxnas.data", "tensorflow"), ("jaxnas.weights", "torch")}


def layer(module: str) -> str:
    if module == "jaxnas.cli":
        return "cli"
    if module in APP:
        return "app"
    for prefix, name in (("jaxnas.methods", "methods"), ("jaxnas.export", "export"), ("jaxnas.latency", "latency"),
                         ("jaxnas.runtime", "runtime")):
        if module == prefix or module.startswith(prefix + "."):
            return name
    return "core"


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if folder == "jaxnas" and parts[:1] in (["export"], ["latency"]):
                continue
            out[".".join([package, *parts])] = path
    return out


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                skip.add(id(child))
    return skip


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """Absolute module names `module` imports (jaxnas modules resolved to the deepest known one; third-party
    modules by their top-level name)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_blocks(tree)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                out.add(full if full in known else base)
    resolved = set()
    for name in out:
        if name.split(".")[0] != "jaxnas":
            resolved.add(name.split(".")[0])
            continue
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        resolved.add(name)
    return resolved - {module}


def violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(edges.items()):
        ls = layer(src)
        for dst in sorted(targets):
            if dst.split(".")[0] != "jaxnas":
                excused = any(src.startswith(pkg) and dst == lib for pkg, lib in LIB_EXCEPTIONS)
                if dst in RUNTIME_LIBS and ls not in RUNTIME_LIB_LAYERS and not excused:
                    bad.append(f"{src} ({ls}) imports the runtime library {dst}")
                continue
            ld = layer(dst)
            if dst in SCHEMAS or ld in ALLOWED[ls]:
                continue
            if ls == "methods" and dst in LATENCY_DATA:
                continue
            bad.append(f"{src} ({ls}) -> {dst} ({ld})")
    return bad


@pytest.fixture(scope="module")
def edges() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(m, p, set(mods)) for m, p in mods.items()}


def test_every_import_edge_is_allowed(edges):
    assert violations(edges) == []


def test_the_checker_refuses_forbidden_edges(edges):
    """Guard of the guard: each forbidden direction is reported."""
    for src, dst in [("jaxnas.latency.builder", "jaxnas.methods.depth.merge"),   # latency -> methods
                     ("jaxnas.export.onnx_export", "jaxnas.latency.backends"),    # export -> latency
                     ("jaxnas.methods.dmcp.run", "jaxnas.latency.measure"),       # methods -> runtime
                     ("jaxnas.methods.dmcp.run", "jaxnas.export"),                # methods -> export
                     ("jaxnas.methods.dmcp.run", "jaxnas.pipeline"),              # methods -> app (up)
                     ("jaxnas.pipeline", "jaxnas.cli"),                           # app -> cli (up)
                     ("jaxnas.models", "jaxnas.methods.dmcp"),                    # core -> methods
                     ("jaxnas.train.loop", "jaxnas.latency.oracle"),              # core -> latency
                     ("jaxnas.spec", "onnxruntime")]:                             # core -> a runtime
        assert violations({**edges, src: edges.get(src, set()) | {dst}}), (src, dst)
    # The allowed exceptions stay allowed.
    assert not violations({"jaxnas.methods.tfnas.x": {"jaxnas.latency.imports"}, "jaxnas.config": SCHEMAS})


def test_the_layers_hold_what_the_design_says(edges):
    assert layer("jaxnas.cli") == "cli" and layer("jaxnas.pipeline") == "app" and layer("jaxnas.trainer") == "core"
    assert {m for m in edges if layer(m) == "methods"} >= {"jaxnas.methods", "jaxnas.methods.base",
                                                         "jaxnas.methods.dmcp.run", "jaxnas.methods.depth.pipeline"}
    # The method registry is discovered, not listed: no core or app module names a method folder.
    for src, targets in edges.items():
        if layer(src) in ("core", "app", "cli"):
            assert not [t for t in targets if t.startswith(("jaxnas.methods.dmcp", "jaxnas.methods.depth"))], src


def test_every_module_imports_and_core_loads_no_runtime():
    mods = sorted(modules())
    light = [m for m in mods if layer(m) in ("core", "methods")]
    code = (
        "import importlib, sys\n"
        f"light = {light!r}\n"
        "for m in light:\n    importlib.import_module(m)\n"
        f"runtime = sorted(n for n in sys.modules if n.split('.')[0] in {sorted(RUNTIME_LIBS)!r})\n"
        "print('RUNTIME', runtime)\n"
        f"for m in {mods!r}:\n    importlib.import_module(m)\n"
        "print('ALL OK')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RUNTIME []" in out.stdout and "ALL OK" in out.stdout, out.stdout[-2000:]
