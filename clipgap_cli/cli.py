"""The `clipgap` command line: thin commands that parse, validate, call one function, print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from clipgap_cli.errors import ClipgapError
from clipgap_cli.rundir import Run
from clipgap_cli.versions import stack_versions

console = Console()


class _Commands(TyperGroup):
    """Turns a ClipgapError raised by any command into one line on stderr and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ClipgapError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None


def _typer(help: str) -> typer.Typer:
    return typer.Typer(
        cls=_Commands,
        help=help,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
    )


app = _typer(
    "CLIP-guided domain-generalised object detection on MMDetection.\n\n"
    "Stages share artifacts through a run directory (--run): encode-prompts, "
    "optimize-augs, train, evaluate, export."
)
runs_app = _typer("Inspect run directories.")
app.add_typer(runs_app, name="runs")


def _print_version(value: bool) -> None:
    if value:
        versions = stack_versions()
        stack = ", ".join(
            f"{name} {v or 'not installed'}" for name, v in versions.items() if name != "clipgap"
        )
        typer.echo(f"clipgap {versions['clipgap']} ({stack})")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the versions of clipgap, torch, mmdet, mmcv, mmengine and open_clip, then exit.",
        ),
    ] = False,
) -> None:
    pass


def _human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@runs_app.command("show")
def runs_show(
    run: Annotated[Path, typer.Argument(help="The run directory to show.")],
) -> None:
    """Show a run's artifacts and check each against its manifest hash.

    Exits with status 1 when an artifact is missing or was modified after it was written.
    """
    run_dir = Run.open(run)
    artifacts = run_dir.artifacts()
    if not artifacts:
        console.print(f"{run}: no artifacts yet")
        return
    table = Table(title=f"run {run}")
    for column in ("artifact", "stage", "sha256", "size", "created", "status"):
        table.add_column(column, justify="right" if column == "size" else "left")
    invalid = 0
    for rel, artifact in artifacts.items():
        status = run_dir.status(artifact)
        invalid += status != "ok"
        style = "green" if status == "ok" else "bold red"
        table.add_row(
            rel,
            artifact.stage,
            artifact.sha256[:12],
            _human_size(artifact.size),
            artifact.created,
            f"[{style}]{status}[/]",
        )
    console.print(table)
    if invalid:
        raise ClipgapError(f"{invalid} of {len(artifacts)} artifacts in {run} failed verification")


def main() -> None:
    app(prog_name="clipgap")
