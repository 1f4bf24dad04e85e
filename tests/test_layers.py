"""The package's layers import downwards only (docs/development.md, "Layout"): the stages and the
command line sit above everything else, and what a bundle imports is no training code."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "clipgap_cli"
# Below the stages: what the stages, and the models a bundle loads, are built of.
LOWER = ("models", "clip", "augmentation", "data", "evaluation", "artifacts.py", "rundir.py", "compat.py")
COMMAND_LINES = ("data/cli.py",)  # the top layer, beside clipgap_cli/cli.py
UPPER = ("clipgap_cli.stages", "clipgap_cli.cli")


def imported_modules(path: Path, root: Path = PACKAGE) -> set[str]:
    """Every module a file of the package at `root` imports, at the top or inside a function,
    as absolute names; `from a import b` counts as `a` and `a.b`."""
    package = ".".join(("clipgap_cli", *path.relative_to(root).parent.parts))
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            modules.add(base)
            modules.update(f"{base}.{alias.name}" for alias in node.names)
    return modules


def lower_files() -> list[Path]:
    files = []
    for part in LOWER:
        path = PACKAGE / part
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return [f for f in files if f.relative_to(PACKAGE).as_posix() not in COMMAND_LINES]


def is_upper(module: str) -> bool:
    return any(module == upper or module.startswith(f"{upper}.") for upper in UPPER)


def test_no_module_below_the_stages_imports_a_stage_or_the_command_line():
    files = lower_files()
    assert PACKAGE / "models" / "bbox_head.py" in files and PACKAGE / "artifacts.py" in files
    upward = {
        f"{file.relative_to(PACKAGE)} imports {module}"
        for file in files
        for module in imported_modules(file)
        if is_upper(module)
    }
    assert not upward, sorted(upward)


def test_the_import_walk_sees_every_form_of_import(tmp_path):
    models = tmp_path / "clipgap_cli" / "models"
    models.mkdir(parents=True)
    (models / "x.py").write_text(
        "import clipgap_cli.stages.train\n"
        "from clipgap_cli import stages\n"
        "def f():\n    from ..stages.export import export\n"
    )
    found = {m for m in imported_modules(models / "x.py", root=tmp_path / "clipgap_cli") if is_upper(m)}
    stages = "clipgap_cli.stages"
    assert found == {f"{stages}.train", stages, f"{stages}.export", f"{stages}.export.export"}


def test_importing_the_models_as_a_bundle_does_no_stage_module():
    probe = (
        "import sys, clipgap_cli.models; "
        "print(sorted(m for m in sys.modules\n"
        "             if m == 'clipgap_cli.cli' or m.startswith('clipgap_cli.stages')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


# The bottom layer: what the run directory and the stack fixes are built on.
BOTTOM = ("io.py", "compat.py", "errors.py", "versions.py")


def test_the_bottom_layer_imports_nothing_above_it():
    above = [
        f"clipgap_cli.{path.stem}"
        for path in PACKAGE.iterdir()
        if (path.is_dir() and (path / "__init__.py").is_file())
        or (path.suffix == ".py" and path.name not in BOTTOM)
    ]
    assert "clipgap_cli.rundir" in above and "clipgap_cli.stages" in above
    upward = {
        f"{name} imports {module}"
        for name in BOTTOM
        for module in imported_modules(PACKAGE / name)
        if any(module == a or module.startswith(f"{a}.") for a in above)
    }
    assert not upward, sorted(upward)
