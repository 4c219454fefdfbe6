"""Dependencies point one way: the teachers' core and the metrics never import the tiny package.

Each check imports modules in a fresh interpreter (so nothing another test imported counts)
and lists which ``teachers.tiny`` modules ended up in ``sys.modules``; the list must be empty.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_PACKAGE = "teachers.tiny"
CORE_MODULES = (
    "teachers",
    "teachers.protocol",
    "teachers.registry",
    "teachers.checkpoint",
    "teachers.sampling",
    "teachers.shipped",
    "teachers.llamagen",
    "teachers.var",
)
METRIC_MODULES = ("dd.metrics", "dd.metrics.digits", "dd.metrics.generative", "dd.metrics.spaces")
FIRST_PARTY = ("teachers", "dd", "data_gen")
IMPORT_TIMEOUT_S = 120


def tiny_modules_after_importing(modules: tuple[str, ...]) -> list[str]:
    """Names of ``teachers.tiny*`` modules loaded by importing ``modules`` in a fresh process."""
    script = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({TINY_PACKAGE!r}))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=IMPORT_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "modules", [CORE_MODULES, METRIC_MODULES], ids=["teachers-core", "dd-metrics"]
)
def test_module_group_does_not_import_the_tiny_package(modules):
    assert tiny_modules_after_importing(modules) == []


def test_the_check_sees_the_tiny_package_when_it_is_imported():
    """The same check on the recipe-level resolver, which does import the tiny package."""
    assert TINY_PACKAGE in tiny_modules_after_importing(("dd.teacher_spec",))


def _first_party_imports_guarded_by_import_error(source: str) -> list[str]:
    """Modules of this project imported inside a ``try`` whose handler catches ImportError."""
    guarded = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Try):
            continue
        caught = {
            name.id
            for handler in node.handlers
            if handler.type is not None
            for name in ast.walk(handler.type)
            if isinstance(name, ast.Name)
        }
        if not caught & {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}:
            continue
        for statement in node.body:
            for inner in ast.walk(statement):
                names = []
                if isinstance(inner, ast.ImportFrom) and inner.module:
                    names = [inner.module]
                elif isinstance(inner, ast.Import):
                    names = [alias.name for alias in inner.names]
                guarded += [n for n in names if n.split(".")[0] in FIRST_PARTY]
    return guarded


def test_the_guard_scan_finds_a_swallowed_first_party_import():
    source = "try:\n    from teachers.tiny import x\nexcept ImportError:\n    x = None\n"
    assert _first_party_imports_guarded_by_import_error(source) == ["teachers.tiny"]
    optional = "try:\n    from flash_attn import f\nexcept ImportError:\n    f = None\n"
    assert _first_party_imports_guarded_by_import_error(optional) == []


def test_no_first_party_import_error_is_swallowed():
    """An error inside the tiny package (or any of ours) surfaces as itself. Optional third-party
    packages (flash-attn) may still be probed with try/except ImportError."""
    offenders = {
        str(path.relative_to(REPO_ROOT)): guarded
        for folder in FIRST_PARTY
        for path in sorted((REPO_ROOT / folder).rglob("*.py"))
        if (guarded := _first_party_imports_guarded_by_import_error(path.read_text()))
    }
    assert offenders == {}
