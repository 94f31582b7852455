"""The wheel installs one top-level package, `jaxnas`, with `export/` and `latency/` as `jaxnas.export` and
`jaxnas.latency`, and every package directory in it (CI also runs this file against the installed wheel
from outside the checkout, where a missing package would fail to import)."""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_module():
    spec = importlib.util.spec_from_file_location("jaxnas_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines package_list; setup() runs only as __main__
    return module


def _package_dirs() -> dict[str, Path]:
    out = {}
    for folder, name in (("jaxnas", "jaxnas"), ("export", "jaxnas.export"), ("latency", "jaxnas.latency")):
        for d in sorted(p for p in (ROOT / folder).rglob("*") if p.is_dir() and "__pycache__" not in p.parts):
            if any(d.glob("*.py")):
                out[".".join([name, *d.relative_to(ROOT / folder).parts])] = d
        out[name] = ROOT / folder
    return out


def test_every_package_directory_is_packaged():
    dirs = _package_dirs()
    missing_init = [str(d) for d in dirs.values() if not (d / "__init__.py").exists()]
    assert missing_init == [], f"folders with modules but no __init__.py: {missing_init}"
    listed = set(_setup_module().package_list(ROOT))
    assert listed == set(dirs), (sorted(set(dirs) - listed), sorted(listed - set(dirs)))
    assert all(p == "jaxnas" or p.startswith("jaxnas.") for p in listed)


def test_the_installed_distribution():
    import jaxnas
    import jaxnas.export
    import jaxnas.latency

    # The source checkout (editable install). Not `is_relative_to(ROOT)`: CI's wheel venv may live under ROOT.
    if Path(jaxnas.__file__).resolve().parent == ROOT / "jaxnas":
        assert Path(jaxnas.export.__file__).parent == ROOT / "export"
        assert Path(jaxnas.latency.__file__).parent == ROOT / "latency"
        return
    dist = importlib.metadata.distribution("jaxnas")
    files = {str(f) for f in (dist.files or [])}
    top = dist.read_text("top_level.txt")
    assert top is not None and top.split() == ["jaxnas"]
    for package in _package_dirs():
        assert f"{package.replace('.', '/')}/__init__.py" in files, package
    assert "jaxnas/data/embedded/fashion_mnist_subset.npz" in files
