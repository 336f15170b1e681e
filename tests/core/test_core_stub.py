"""aiarch/_core.pyi describes the compiled module: the same classes, members and functions, and
it ships beside the module with py.typed (mypy reads it instead of treating the module as Any)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import aiarch
from aiarch import _core

PACKAGE = Path(aiarch.__file__).parent
STUB = PACKAGE / "_core.pyi"


def _stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text(), filename=str(STUB))


def _stub_names(tree: ast.Module) -> dict[str, set[str] | None]:
    """Top-level names of the stub; a class maps to its member names, anything else to None."""
    names: dict[str, set[str] | None] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names[node.name] = {
                n.name
                for n in node.body
                if isinstance(n, ast.FunctionDef) and not n.name.startswith("__")
            }
        elif isinstance(node, ast.FunctionDef):
            names[node.name] = None
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = None
    return names


def _module_names() -> dict[str, set[str] | None]:
    names: dict[str, set[str] | None] = {}
    for name, value in vars(_core).items():
        if name.startswith("__") and name != "__version__":
            continue
        if isinstance(value, type):
            names[name] = {k for k in vars(value) if not k.startswith("_")}
        else:
            names[name] = None
    return names


def test_stub_and_py_typed_ship_beside_the_module() -> None:
    assert STUB.is_file()
    assert (PACKAGE / "py.typed").is_file()
    assert Path(_core.__file__).parent == PACKAGE


def test_stub_names_every_class_member_and_function_of_the_module() -> None:
    stub = _stub_names(_stub_tree())
    module = _module_names()
    # Type-only helpers of the stub (aliases, protocols, TypedDicts) are not module names.
    missing = sorted(set(module) - set(stub))
    assert missing == [], f"defined by _core but not typed in _core.pyi: {missing}"
    for name, members in module.items():
        if members is None:
            continue
        assert stub[name] == members, f"_core.{name}: stub {stub[name]} vs module {members}"


def test_stub_declares_nothing_the_module_lacks() -> None:
    type_only = set()
    for node in _stub_tree().body:
        if isinstance(node, ast.ClassDef) and any(
            isinstance(b, ast.Name) and b.id in ("Protocol", "TypedDict") for b in node.bases
        ):
            type_only.add(node.name)
        elif isinstance(node, ast.AnnAssign) and ast.unparse(node.annotation) == "TypeAlias":
            type_only.add(ast.unparse(node.target))
    extra = sorted(set(_stub_names(_stub_tree())) - set(_module_names()) - type_only)
    assert extra == [], f"typed in _core.pyi but not defined by _core: {extra}"


@pytest.mark.parametrize(
    "cls", ["Model", "FeatureTable", "FeaturePlan", "DriftSketch", "LoadGenerator"]
)
def test_stub_types_every_parameter_and_return(cls: str) -> None:
    node = next(n for n in _stub_tree().body if isinstance(n, ast.ClassDef) and n.name == cls)
    for fn in (n for n in node.body if isinstance(n, ast.FunctionDef)):
        args = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs][1:]  # drop self
        untyped = [a.arg for a in args if a.annotation is None]
        assert untyped == [], f"{cls}.{fn.name}: untyped parameters {untyped}"
        assert fn.returns is not None, f"{cls}.{fn.name}: no return type"
        assert "Any" not in ast.unparse(fn), f"{cls}.{fn.name} uses Any"
