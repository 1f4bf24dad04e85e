"""`clipgap clip`: pretrain RN-synth on the synthetic world, and report what a CLIP knows of it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clipgap_cli import options
from clipgap_cli.clip.model import default_pretrained
from clipgap_cli.clip.pretrain import Recipe, pretrain
from clipgap_cli.clip.zero_shot import render_markdown, write_report, zero_shot_report
from clipgap_cli.errors import ClipgapError

console = Console()
clip_app = typer.Typer(
    help="RN-synth, clipgap's CLIP of the synthetic world: pretrain it, report its zero-shot skill.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_DEFAULTS = Recipe()


def _bar() -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, TextColumn("{task.fields[loss]}"), console=Console(stderr=True), transient=True)


@clip_app.command("pretrain")
def pretrain_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="The weights file to write (a .pt state_dict).")],
    seed: Annotated[
        int,
        typer.Option(help="Seeds the corpus, the initial weights and the batches.", callback=options.seed),
    ] = (_DEFAULTS.seed),
    scenes: Annotated[
        int, typer.Option(help="Planned scenes of the corpus.", callback=options.count)
    ] = _DEFAULTS.scenes,
    looks_per_scene: Annotated[
        int, typer.Option(help="Conditions each scene is rendered under.", callback=options.count)
    ] = _DEFAULTS.looks_per_scene,
    full_strength: Annotated[
        float,
        typer.Option(
            help="The share of the showings at full strength (severity 1).", callback=options.probability
        ),
    ] = _DEFAULTS.full_strength,
    min_severity: Annotated[
        float,
        typer.Option(
            help="The other showings are drawn at a strength from this to 1 (0: the clear day, "
            "1: the full condition).",
            callback=options.probability,
        ),
    ] = _DEFAULTS.min_severity,
    crops_per_image: Annotated[
        int,
        typer.Option(
            help="Single-object crops taken from each rendered image, with context and tight in turn.",
            callback=options.integer(0),
        ),
    ] = _DEFAULTS.crops_per_image,
    steps: Annotated[int, typer.Option(help="Optimiser steps.", callback=options.count)] = _DEFAULTS.steps,
    batch_size: Annotated[
        int, typer.Option(help="Image-caption pairs per step.", callback=options.integer(2))
    ] = _DEFAULTS.batch_size,
    lr: Annotated[
        float, typer.Option(help="Peak AdamW learning rate, > 0.", callback=options.positive)
    ] = _DEFAULTS.lr,
    model: Annotated[str, typer.Option(help="The open_clip model config to train.")] = _DEFAULTS.model,
    bf16: Annotated[
        bool,
        typer.Option(
            "--bf16/--fp32",
            help="Run both towers under CPU bfloat16 autocast: faster on CPUs with bf16 instructions "
            "(AVX512-BF16, AMX), much slower on others. Changes the weights.",
        ),
    ] = _DEFAULTS.bf16,
) -> None:
    """Train RN-synth contrastively from random weights on captioned renders of all 18 conditions.

    The defaults are the recipe of the weights shipped with clipgap (about 40 minutes on two
    CPU cores); OUT gets the state_dict and OUT with the suffix .json the recipe, the loss
    curve and the timings.
    """
    recipe = Recipe(
        model=model,
        seed=seed,
        scenes=scenes,
        looks_per_scene=looks_per_scene,
        full_strength=full_strength,
        min_severity=min_severity,
        crops_per_image=crops_per_image,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        bf16=bf16,
    )
    with _bar() as bar:
        tasks: dict[str, int] = {}

        def progress(phase: str, done: int, total: int, loss: float | None) -> None:
            if phase not in tasks:
                label = "rendering the corpus" if phase == "render" else "training"
                tasks[phase] = bar.add_task(label, total=total, loss="")
            bar.update(tasks[phase], completed=done, loss="" if loss is None else f"loss {loss:.3f}")

        result = pretrain(out, recipe, progress)
    table = Table(title=f"pretrained {model}", show_header=False)
    table.add_row("image-caption samples", str(result.samples))
    table.add_row("loss, first and last", f"{result.losses[0]:.3f} → {result.losses[-1]:.3f}")
    table.add_row("rendering / training", f"{result.render_seconds:.0f} s / {result.train_seconds:.0f} s")
    table.add_row("weights", f"{result.path} (sha256 {result.sha256[:12]})")
    console.print(table)


@clip_app.command("zero-shot")
def zero_shot_command(
    clip: Annotated[str, typer.Option("--clip", help="The CLIP model to probe.")] = "RN-synth",
    pretrained: Annotated[
        str | None,
        typer.Option(
            "--pretrained",
            help="Its weights: a tag, a weights file (e.g. one `clipgap clip pretrain` wrote), or none. "
            "Default: the model's default weights (synth for RN-synth).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write rn-synth-zero-shot.md and .json into this directory."),
    ] = None,
    scenes: Annotated[
        int, typer.Option(help="Fresh scenes, each rendered under all 18 conditions.", callback=options.count)
    ] = 40,
    seed: Annotated[int, typer.Option(help="Seed of the fresh renders.", callback=options.seed)] = 0,
) -> None:
    """Zero-shot accuracy over the 5 domains, the 18 conditions and the 7 classes, and how well
    the text directions of the 15 target prompts agree with the image directions."""
    if out is not None and out.exists() and not out.is_dir():
        raise ClipgapError(f"--out {out} is a file; give the directory to write the report into")
    with _bar() as bar:
        task = bar.add_task("rendering", total=scenes, loss="")
        report = zero_shot_report(
            clip,
            default_pretrained(clip) if pretrained is None else pretrained,
            seed=seed,
            scenes=scenes,
            progress=lambda done, total: bar.update(task, completed=done),
        )
    console.print(render_markdown(report), markup=False, soft_wrap=True)
    if out:
        for path in write_report(report, out):
            console.print(f"written: {path}", soft_wrap=True)
