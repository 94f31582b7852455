"""Package layout (everything else is in pyproject.toml).

The top-level folders `export/` and `latency/` install as `jaxnas.export` and `jaxnas.latency`, so the
wheel has one top-level package, `jaxnas`. Automatic discovery cannot find remapped subpackages, so they
are listed here from the folders themselves (a new method folder or backend needs no edit);
tests/test_packaging.py checks the built wheel against the package directories.
"""
from setuptools import find_packages, setup

MAPPED = {"jaxnas.export": "export", "jaxnas.latency": "latency"}

packages = find_packages(include=["jaxnas", "jaxnas.*"])
for name, folder in MAPPED.items():
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=MAPPED)
