"""Package layout (everything else is in pyproject.toml).

The top-level folders `export/` and `latency/` install as `jaxnas.export` and `jaxnas.latency`, so the
wheel has one top-level package, `jaxnas`. Automatic discovery cannot find remapped subpackages, so they
are listed here from the folders themselves (a new method folder or backend needs no edit);
tests/test_packaging.py checks the list, and the installed wheel, against the package directories.
"""
from pathlib import Path

from setuptools import find_packages, setup

MAPPED = {"jaxnas.export": "export", "jaxnas.latency": "latency"}


def package_list(root: Path = Path(__file__).resolve().parent) -> list[str]:
    packages = find_packages(str(root), include=["jaxnas", "jaxnas.*"])
    for name, folder in MAPPED.items():
        packages += [name] + [f"{name}.{sub}" for sub in find_packages(str(root / folder))]
    return packages


if __name__ == "__main__":
    setup(packages=package_list(), package_dir=MAPPED)
