"""The package's shape: four subpackages whose imports go one way, no circle of imports, unique module names, no
file too long to read, and the few private library names still used gathered in one module that is checked here."""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
from pathlib import Path

import pytest

from alt_text_recipes.data.library_internals import PRIVATE_NAMES

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "recipes" / "alt_text_recipes"
SUBPACKAGES = ("data", "train", "memory", "outputs")
# What train/ and data/ may import of memory/: the measured breakdown the Trainer reports through. The
# estimator's side reaches them only through the out-of-memory advice, imported inside the function that
# handles an out-of-memory error (`LAZY_ONLY`).
MEASURED_MEMORY = {
    "alt_text_recipes.memory.measured",
    "alt_text_recipes.memory.parts",
    "alt_text_recipes.memory.telemetry",
}
LAZY_ONLY = {"alt_text_recipes.memory.oom_advice"}
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(module: str) -> list[tuple[str, bool]]:
    """(imported package module, whether the import is at module level) for each import of the package."""
    tree = ast.parse(MODULES[module].read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{module}: relative import; the package imports by absolute name")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("alt_text_recipes"):
            for alias in node.names:  # `from alt_text_recipes.train import families` imports a module
                full = f"{node.module}.{alias.name}"
                found.append((full if full in MODULES else node.module, id(node) in top_level))
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in top_level) for a in node.names if a.name.startswith("alt_text_recipes")]
    return [(target, top) for target, top in found if target != module]


GRAPH = {module: imports_of(module) for module in MODULES}


def subpackage(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_the_package_is_four_subpackages():
    top = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__" and not p.name.endswith(".egg-info"))
    assert top == sorted(["__init__.py", *SUBPACKAGES])
    assert all(module in MODULES for module in GRAPH for module, _ in GRAPH[module]), "an import names no module"


def test_no_circle_of_imports():
    """Depth-first over every import, module level or inside a function: a circle is named in full."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target, _ in GRAPH[module]:
            if state.get(target) == "open":
                circle = path[path.index(target) :] + [target]
                raise AssertionError("circle of imports: " + " -> ".join(circle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [module])


def test_imports_go_one_way():
    wrong = []
    for module, imports in GRAPH.items():
        own = subpackage(module)
        for target, top_level in imports:
            other = subpackage(target)
            if other == own or other == "":
                continue
            if own == "data":
                wrong.append(f"{module} -> {target}: data/ imports no other subpackage")
            elif own == "train" and other == "memory":
                if target in LAZY_ONLY and not top_level:
                    continue
                if target not in MEASURED_MEMORY:
                    wrong.append(
                        f"{module} -> {target}: train/ reads the measured breakdown only, and the "
                        "out-of-memory advice inside the function that handles the error"
                    )
            elif own == "memory" and other == "outputs":
                wrong.append(f"{module} -> {target}: memory/ does not import outputs/")
            elif own == "outputs" and other == "memory" and target != "alt_text_recipes.memory.parts":
                wrong.append(f"{module} -> {target}: outputs/ reads only the part names of memory/")
    assert not wrong, "\n".join(wrong)


def test_the_import_rules_catch_a_wrong_import(tmp_path, monkeypatch):
    """The rules above fail on an import against the direction (the estimator imported by the training loop)."""
    loop = "alt_text_recipes.train.loop"
    monkeypatch.setitem(GRAPH, loop, [*GRAPH[loop], ("alt_text_recipes.memory.estimator", True)])
    with pytest.raises(AssertionError, match="train/ reads the measured breakdown only"):
        test_imports_go_one_way()
    monkeypatch.setitem(GRAPH, "alt_text_recipes.data.paths", [("alt_text_recipes.data.sources", True)])
    monkeypatch.setitem(GRAPH, "alt_text_recipes.data.sources", [("alt_text_recipes.data.paths", True)])
    with pytest.raises(AssertionError, match="circle of imports"):
        test_no_circle_of_imports()


def test_no_module_name_repeats():
    """One name, one thing: the entry scripts, the benchmarks and the package's modules and subpackages."""
    names: dict[str, list[str]] = {}
    files = [*(REPO_ROOT / "recipes").glob("*.py"), *(REPO_ROOT / "benchmarks").glob("*.py"), *PACKAGE.rglob("*.py")]
    for path in files:
        name = path.parent.name if path.name == "__init__.py" else path.stem
        if path.parent != PACKAGE:  # the package's own __init__ is the package
            names.setdefault(name, []).append(str(path.relative_to(REPO_ROOT)))
    repeated = {name: paths for name, paths in names.items() if len(paths) > 1}
    assert not repeated, f"module names used twice: {repeated}"


def test_no_file_outside_tests_is_over_450_lines():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    code = [
        name
        for name in tracked.stdout.split()
        if name.endswith((".py", ".md", ".sh", ".yaml", ".toml", "Makefile"))
        and not name.startswith(("tests/", "benchmarks/results/"))
        and (REPO_ROOT / name).is_file()
    ]
    long = {name: lines for name in code if (lines := len((REPO_ROOT / name).read_text().splitlines())) > MAX_LINES}
    assert len(code) > 50 and not long, f"over {MAX_LINES} lines: {long}"
    assert len((REPO_ROOT / "README.md").read_text().splitlines()) <= 250


def private_name_exists(name: str) -> bool:
    """Whether one entry of PRIVATE_NAMES still exists in the installed libraries."""
    from torch.utils.data import DataLoader
    from transformers import Trainer, TrainingArguments

    if name == "transformers.Trainer()._eval_dataloaders":  # made by the first evaluation DataLoader it caches
        args = TrainingArguments(
            output_dir="unused",
            use_cpu=True,
            report_to=[],
            dataloader_num_workers=1,
            dataloader_persistent_workers=True,
        )
        import torch

        trainer = Trainer(model=torch.nn.Linear(1, 1), args=args, eval_dataset=[{"x": 1}])
        trainer.get_eval_dataloader()
        return hasattr(trainer, "_eval_dataloaders")
    if name == "transformers.PretrainedConfig()._attn_implementation":
        from transformers import PretrainedConfig

        return hasattr(PretrainedConfig(), "_attn_implementation")
    if name == "torch.utils.data.DataLoader()._iterator":
        return hasattr(DataLoader([1]), "_iterator")
    if name == "argparse.ArgumentParser()._option_string_actions":
        return "--help" in getattr(argparse.ArgumentParser(), "_option_string_actions", {})
    owner, attribute = name.rsplit(".", 1)
    module_path, _, class_name = owner.rpartition(".")
    try:
        target = importlib.import_module(owner)
    except ModuleNotFoundError:
        target = getattr(importlib.import_module(module_path), class_name)
    return hasattr(target, attribute)


@pytest.mark.parametrize("name", PRIVATE_NAMES)
def test_each_private_library_name_still_exists(name):
    assert private_name_exists(name), (
        f"{name} is gone from the installed version: recipes/alt_text_recipes/data/library_internals.py uses it "
        "(see why there); replace it with what this version offers."
    )


def test_private_library_names_are_used_only_in_library_internals():
    attributes = {name.rsplit(".", 1)[1] for name in PRIVATE_NAMES}
    users = {
        module: sorted(attribute for attribute in attributes if f".{attribute}" in path.read_text())
        for module, path in MODULES.items()
        if not module.endswith("library_internals")
    }
    assert not {module: found for module, found in users.items() if found}
