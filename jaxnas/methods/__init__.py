"""Search and pruning methods, one folder each, found by name.

    from jaxnas import methods
    methods.names()            # ['depth', 'dmcp', ...]: every folder under jaxnas/methods/
    methods.get("dmcp")        # its `METHOD` (jaxnas.methods.base.Method), imported on first use

Adding a method is adding a folder whose `__init__.py` defines ``METHOD``; see `base.py` and
docs/architecture.md.
"""
from __future__ import annotations

import difflib
import functools
import importlib
import pkgutil

from jaxnas.methods.base import Method, SearchContext, SearchError, SearchResult

__all__ = ["Method", "SearchContext", "SearchError", "SearchResult", "names", "get", "all_methods"]


@functools.lru_cache(maxsize=None)
def names() -> tuple[str, ...]:
    """Every method folder, without importing any of them."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg))


def get(name: str) -> Method:
    """The `METHOD` of folder `name`; `SearchError` (one line, with a suggestion) for an unknown name."""
    if name not in names():
        close = difflib.get_close_matches(str(name), names(), n=1, cutoff=0.5)
        hint = f" — did you mean {close[0]!r}?" if close else ""
        raise SearchError(f"search.method: unknown method {name!r}{hint} (registered: {', '.join(names())}; "
                          "`jaxnas methods` lists them)")
    module = importlib.import_module(f"{__name__}.{name}")
    method = getattr(module, "METHOD", None)
    if not isinstance(method, Method) or method.name != name:
        raise TypeError(f"jaxnas/methods/{name}/__init__.py must define METHOD = Method(name={name!r}, ...)")
    return method


def all_methods() -> list[Method]:
    return [get(n) for n in names()]
