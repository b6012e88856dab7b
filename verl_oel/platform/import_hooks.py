"""Run a callback right after a module executes, without importing it ahead of time.

The CPU patches target modules that are heavy to import (vLLM) or that verl imports late.
Importing them from the plugin would slow every process that imports verl, and some
processes never need them. A finder on ``sys.meta_path`` wraps the module's loader instead.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from types import ModuleType

Callback = Callable[[ModuleType], None]


class _RunAfterExec(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, callback: Callback) -> None:
        self._inner = inner
        self._callback = callback

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        self._callback(module)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.callbacks: dict[str, list[Callback]] = {}
        self._resolving: set[str] = set()

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001 - importlib protocol
        if fullname not in self.callbacks or fullname in self._resolving:
            return None
        self._resolving.add(fullname)
        try:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        finally:
            self._resolving.discard(fullname)
        if spec is None or spec.loader is None:
            return None
        callbacks = self.callbacks[fullname]
        spec.loader = _RunAfterExec(spec.loader, lambda module: [cb(module) for cb in callbacks])
        return spec


_FINDER = _PostImportFinder()


def when_imported(module_name: str, callback: Callback) -> None:
    """Call ``callback(module)`` once ``module_name`` has executed (now, if it already has)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    _FINDER.callbacks.setdefault(module_name, []).append(callback)
    if module_name in sys.modules:
        callback(sys.modules[module_name])


def is_importing(module_name: str) -> bool:
    """True while ``module_name``'s first import is still running its body (a hook it triggered runs now)."""
    spec = getattr(sys.modules.get(module_name), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))
