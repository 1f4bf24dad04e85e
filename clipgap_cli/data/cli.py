"""`clipgap data`: convert VOC-XML trees to COCO json, render the synthetic benchmark, mark
novel classes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clipgap_cli import options
from clipgap_cli.data.convert import CLASS_SETS, ConvertReport, convert_voc
from clipgap_cli.data.spec import load_spec, mark_novel, write_spec
from clipgap_cli.data.synth import CLASSES, EXTRA_DOMAINS, SEVERITY, SIZES, render_preview, synthesize
from clipgap_cli.io import atomic_write

console = Console()
data_app = typer.Typer(
    help="Prepare datasets: convert VOC-XML trees to COCO json, render the synthetic benchmark, mark "
    "novel classes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@contextlib.contextmanager
def _progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr, and the `progress(done, total)` callback that drives it."""
    columns = (TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


@data_app.command("convert")
def convert(
    root: Annotated[
        Path,
        typer.Argument(
            help="The VOC-XML tree to convert, only read: a Diverse Weather root (<domain>/VOC2007/...), "
            "a directory holding VOCdevkit/ or VOC2007/ and VOC2012/, or a Clipart1k, Watercolor2k or "
            "Comic2k directory (or a directory of them).",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Where to write annotations/<domain>_<split>.json and clipgap-data.json."
        ),
    ],
    classes: Annotated[
        str | None,
        typer.Option(
            help=f"A class set ({', '.join(CLASS_SETS)}) or comma-separated class names, in label order. "
            "Default: dwd for Diverse Weather, voc-art when Watercolor2k or Comic2k is present, else voc.",
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(help="The source domain. Default: daytime_clear or voc if present, else the only one."),
    ] = None,
) -> None:
    """Convert VOC-XML annotations to COCO json per domain and split, and write the dataset spec.

    Nothing is written into ROOT: the spec points at ROOT's JPEGImages directories by
    absolute path. Objects and images that cannot be used (unknown class, degenerate or
    out-of-image box, missing image) are left out and counted; `difficult` objects are
    kept as ignored instances.
    """
    with _progress("converting") as progress:
        report = convert_voc(root, out, classes=classes, source=source, progress=progress)
    _print_conversion(report)


@data_app.command("synth")
def synth(
    out: Annotated[Path, typer.Argument(help="The directory to write the dataset into.")],
    seed: Annotated[
        int, typer.Option(help="Random seed; the same seed gives identical files.", callback=options.seed)
    ] = 0,
    images_per_domain: Annotated[
        int,
        typer.Option(
            help="Images per domain; the first 75% are the train list, the rest test.",
            callback=options.integer(2),
        ),
    ] = 200,
    size: Annotated[
        int, typer.Option(help="Side of the square images, in pixels.", callback=options.integer(*SIZES))
    ] = 256,
    severity: Annotated[
        float,
        typer.Option(
            help="How far the four target domains' looks are from the clear day: 0 renders them as the "
            "clear day, 1 as the full condition (darkest night, heaviest rain and fog). At the default a "
            "source-only detector keeps 50 % of its source AP50 on the targets (the Diverse Weather "
            "Dataset's baseline keeps 57 %; docs/data.md).",
            callback=options.probability,
        ),
    ] = SEVERITY,
    source_images: Annotated[
        int | None,
        typer.Option(
            help="Images of the source domain (daytime_clear), for a larger source test list; "
            "the first --images-per-domain of them are the default's. Default: --images-per-domain.",
            callback=options.integer(2),
        ),
    ] = None,
    extra_domain: Annotated[
        list[str] | None,
        typer.Option(
            "--extra-domain",
            help="Also write this other condition of the grid as a target domain, at --severity "
            "(repeatable; the five domains' files stay the same): " + ", ".join(EXTRA_DOMAINS) + ".",
            show_default=False,
        ),
    ] = None,
    preview: Annotated[
        Path | None,
        typer.Option(
            help="Also write a PNG (256 colours) of four scenes, each rendered in all five domains."
        ),
    ] = None,
) -> None:
    """Render the synthetic road-scene benchmark: 7 classes, 5 weather and lighting domains.

    Writes a Diverse Weather VOC tree (OUT/voc), its COCO json (OUT/annotations) and the
    dataset spec (OUT/clipgap-data.json).
    """
    start = time.perf_counter()
    with _progress("rendering") as progress:
        report = synthesize(
            out,
            seed=seed,
            images_per_domain=images_per_domain,
            size=size,
            severity=severity,
            source_images=source_images,
            extra_domains=extra_domain or (),
            progress=progress,
        )
    elapsed = time.perf_counter() - start
    table = Table(
        title=f"objects per class ({images_per_domain} images per domain, {size} px, severity {severity:g})"
    )
    for column in ("domain", *CLASSES):
        table.add_column(column, justify="left" if column == "domain" else "right")
    for domain, counts in report.counts.items():
        table.add_row(domain, *map(str, counts))
    console.print(table)
    images = images_per_domain * (len(report.counts) - 1) + (source_images or images_per_domain)
    console.print(f"rendered {images} images in {elapsed:.1f} s ({images / elapsed:.0f} images/s)")
    if preview:
        grid = render_preview(seed=seed, size=size, severity=severity)
        atomic_write(preview, lambda tmp: grid.save(tmp, format="PNG", optimize=True))
        console.print(f"preview: {preview}", soft_wrap=True)
    console.print(f"dataset spec: {report.convert.spec.path}", soft_wrap=True)


def _print_conversion(report: ConvertReport) -> None:
    spec = report.spec
    table = Table(title=f"COCO json written ({report.class_set} classes: {', '.join(spec.classes)})")
    table.add_column("domain", no_wrap=True)
    for column in ("role", "split"):
        table.add_column(column)
    for column in ("images", "objects", "ignored", "empty images"):
        table.add_column(column, justify="right")
    table.add_column("used for")
    for s in report.splits:
        domain = spec.domain(s.domain)
        uses = {"train": domain.train_split, "eval": domain.eval_split}
        used_for = ", ".join(use for use, split in uses.items() if split == s.split)
        counts = (s.images, s.objects, s.ignored, s.empty_images)
        table.add_row(s.domain, domain.role, s.split, *map(str, counts), used_for)
    console.print(table)
    if report.issues:
        issues = Table(title="left out or changed")
        for column in ("what", "reason", "count", "first example"):
            issues.add_column(column, justify="right" if column == "count" else "left", overflow="fold")
        for issue in report.issues.values():
            issues.add_row(issue.unit, issue.reason, str(issue.count), issue.example)
        console.print(issues)
    console.print(f"dataset spec: {spec.path}", soft_wrap=True)


@data_app.command("novel")
def novel(
    data: Annotated[Path, typer.Argument(help="The dataset: its directory or its clipgap-data.json.")],
    classes: Annotated[
        list[str] | None,
        typer.Argument(help="The classes to mark as novel; none marks every class a base class again."),
    ] = None,
) -> None:
    """Mark classes as novel, for the open-vocabulary protocol (docs/cli.md).

    `train` then drops the novel classes' boxes from its annotations (their objects stay in the
    images, as background) and trains the classifier on the other, base classes;
    `evaluate` scores every class and reports AP50 over base, novel and all classes.
    """
    spec = mark_novel(load_spec(data), classes or [])
    write_spec(spec)
    if spec.novel_classes:
        console.print(f"novel: {', '.join(spec.novel_classes)}; base: {', '.join(spec.base_classes)}")
    else:
        console.print(f"no novel classes: every class is a base class ({', '.join(spec.classes)})")
    console.print(f"dataset spec: {spec.path}", soft_wrap=True)
