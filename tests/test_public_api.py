"""The packages' public names: each resolves to what its package promises, and importing the packages stays cheap
(no torch), so that ``from maxtoki.inference import load_model`` costs nothing until a model is loaded."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGES = ("maxtoki.inference", "maxtoki.analysis", "maxtoki.model")
HEAVY = ("torch", "transformers", "composer", "llmfoundry")


def defined_names(module: str) -> set[str]:
    """The names a module binds at its top level, read from its source without importing it."""
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_is_bound_or_found_on_first_use(package):
    """Names bound by the package are the objects themselves (not a submodule of the same name, such as
    ``maxtoki.inference.embed``, even once that submodule is imported); names found on first use are defined
    in the module the package looks them up in (resolved for real in the test below: they import Composer)."""
    module = importlib.import_module(package)
    assert len(module.__all__) == len(set(module.__all__)) > 0
    lazy = getattr(module, "_LAZY", {})
    for name in module.__all__:
        if name in lazy:
            assert name not in vars(module) and name in defined_names(lazy[name]), name
            continue
        if importlib.util.find_spec(f"{package}.{name}"):  # a submodule of the same name, imported here too
            importlib.import_module(f"{package}.{name}")
        value = getattr(module, name)
        assert not inspect.ismodule(value), name
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__name__ == name and value.__module__.startswith(package), name
    assert set(lazy) <= set(module.__all__)


def test_importing_the_packages_loads_neither_torch_nor_transformers_nor_composer():
    code = (f"import sys; import {', '.join(PACKAGES)}; "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


@pytest.mark.parametrize("package", PACKAGES)  # imports Composer: 5 to 40 s alone, nothing in the whole run
def test_every_public_name_resolves(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        assert not inspect.ismodule(value), name
    with pytest.raises(AttributeError, match="has no attribute 'not_a_public_name'"):
        module.not_a_public_name  # noqa: B018
