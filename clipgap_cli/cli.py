"""The `clipgap` command line: thin commands that parse, validate, call one function, print."""

from __future__ import annotations

import dataclasses
import signal
import threading
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from clipgap_cli import options
from clipgap_cli.clip.cli import clip_app
from clipgap_cli.clip.model import default_pretrained
from clipgap_cli.clip.prompts import CLASS_TEMPLATE, DEFAULT_PROMPTS_FILE, SOURCE_PROMPT, read_prompts
from clipgap_cli.data.classes import parse_classes
from clipgap_cli.data.cli import data_app
from clipgap_cli.errors import ClipgapError
from clipgap_cli.evaluation.report import compare_table, domain_table, lvis_table
from clipgap_cli.io import no_space_cause, unwritten_file
from clipgap_cli.rundir import Run, describe_clip
from clipgap_cli.stages.encode_prompts import encode_prompts, parse_class_names
from clipgap_cli.stages.evaluate import ALL, evaluate, stored_evaluation
from clipgap_cli.stages.export import export
from clipgap_cli.stages.optimize_augs import STYLE_STAGE, DomainShift, StyleDomainShift, optimize_augs
from clipgap_cli.stages.predict import predict
from clipgap_cli.stages.train import CPU_DETECTORS, DETECTORS, Launch, choose_config, parse_cfg_options, train
from clipgap_cli.versions import stack_versions

console = Console()

# Options that several commands share.
DataOption = Annotated[
    Path, typer.Option("--data", help="The dataset: a directory with clipgap-data.json (or the file itself).")
]
PretrainedFileOption = Annotated[
    Path | None,
    typer.Option(
        "--pretrained",
        help="The local CLIP weights file, if the text embeddings were made from one.",
        show_default=False,
    ),
]
DeviceOption = Annotated[
    str | None,
    typer.Option(
        "--device", help="cpu, cuda or cuda:N. Default: cuda if available, else cpu.", show_default=False
    ),
]
CheckpointOption = Annotated[
    str,
    typer.Option(
        "--checkpoint",
        help="The run's checkpoint: best (the best on the source's evaluation split), last, or a "
        "checkpoint file.",
    ),
]


class _Commands(TyperGroup):
    """Turns a ClipgapError raised by any command, or a write that found the disk full, into one
    line on stderr and exit code 1, and an interruption (Ctrl-C, SIGTERM) into one line and exit
    code 130."""

    def invoke(self, ctx):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)
        try:
            return super().invoke(ctx)
        except ClipgapError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None
        except Exception as err:
            if (full := no_space_cause(err)) is None:
                raise
            where = f": cannot write {file}" if (file := unwritten_file(full)) else ""
            typer.echo(f"error: no space left on device{where}; free some space and run it again", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("error: interrupted; the run directory keeps the artifacts it had before", err=True)
            raise typer.Exit(130) from None


class _SpreadCfgOptions(TyperCommand):
    """A command whose --cfg-options also takes MMDetection's form, several key=value pairs
    after one flag (`--cfg-options a=1 b=2`), besides the repeated flag."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, _spread_values(args, "--cfg-options"))


def _spread_values(args: list[str], flag: str) -> list[str]:
    """`flag a b --other` as `flag a flag b --other`: the bare words after `flag`, up to the
    next option (or `--`), are each a value of it."""
    spread, taking, rest = [], False, iter(args)
    for arg in rest:
        if arg == "--":
            return [*spread, arg, *rest]
        if taking and not arg.startswith("-"):
            spread += [flag, arg]
            continue
        spread.append(arg)
        taking = arg == flag or arg.startswith(f"{flag}=")
        if arg == flag and (value := next(rest, None)) is not None:
            spread.append(value)
    return spread


def _interrupt(signum, frame):
    # SIGTERM (a scheduler's stop, `kill`) unwinds like Ctrl-C: atomic writes in progress are
    # abandoned and their temporary files removed.
    raise KeyboardInterrupt


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
app.add_typer(data_app, name="data")
app.add_typer(clip_app, name="clip")


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


@app.command("encode-prompts")
def encode_prompts_command(
    run: Annotated[
        Path,
        typer.Option(
            "--run", help="The run directory to write prompts/text_embeddings.pt into (made if missing)."
        ),
    ],
    prompts_file: Annotated[
        Path | None,
        typer.Argument(
            help="Target-domain prompts: UTF-8, one a line; blank lines and lines starting with # are "
            "skipped.",
            metavar="PROMPTS_FILE",
            show_default=False,
        ),
    ] = None,
    default_prompts: Annotated[
        bool,
        typer.Option(
            "--default-prompts",
            help="Use CLIP the Gap's 15 Diverse Weather prompts ('an image taken on a fog night', ...) "
            "instead of a PROMPTS_FILE.",
        ),
    ] = False,
    source_prompt: Annotated[
        str, typer.Option("--source-prompt", help="The prompt that describes the source (training) domain.")
    ] = SOURCE_PROMPT,
    classes: Annotated[
        str | None,
        typer.Option(
            "--classes",
            help="Class names in label order, comma-separated. Default: the Diverse Weather classes "
            "bus,bike,car,motor,person,rider,truck.",
            show_default=False,
        ),
    ] = None,
    classes_from: Annotated[
        Path | None,
        typer.Option(
            "--classes-from",
            help="Take the class names from a COCO json's categories, in id order.",
            show_default=False,
        ),
    ] = None,
    class_template: Annotated[
        str, typer.Option("--class-template", help="The class prompt; {} stands for the class name.")
    ] = CLASS_TEMPLATE,
    clip: Annotated[
        str,
        typer.Option(
            "--clip",
            help="The open_clip CLIP ResNet: RN50, RN101, ..., or clipgap's own RN-synth "
            "(pretrained on the synthetic benchmark's world) and RN-tiny (random, for tests).",
        ),
    ] = "RN101",
    pretrained: Annotated[
        str | None,
        typer.Option(
            "--pretrained",
            help="CLIP weights: an open_clip tag (openai, yfcc15m, ...), a local checkpoint file, or none "
            "for random weights. Default: openai where the model has it (RN50, RN101), synth (the weights "
            "shipped with clipgap) for RN-synth, else none.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Re-encode even if the embeddings are current.")
    ] = False,
) -> None:
    """Encode the source, target-domain and class prompts with CLIP's text encoder.

    Writes prompts/text_embeddings.pt in the run directory: the L2-normalised text embeddings
    every later stage uses, the exact strings, and the CLIP model's identity.
    """
    if default_prompts == (prompts_file is not None):
        raise ClipgapError("give either a PROMPTS_FILE or --default-prompts (exactly one)")
    result = encode_prompts(
        run,
        read_prompts(DEFAULT_PROMPTS_FILE if default_prompts else prompts_file),
        source_prompt=source_prompt,
        class_names=parse_class_names(classes, classes_from),
        class_template=class_template,
        clip=clip,
        pretrained=default_pretrained(clip) if pretrained is None else pretrained,
        force=force,
    )
    emb = result.embeddings
    if not result.changed:
        console.print(f"nothing changed: {result.path} is current (use --force to encode again)")
        return
    table = Table(title="encode-prompts", show_header=False)
    table.add_row("CLIP model", describe_clip(emb.clip))
    table.add_row("source prompt", emb.source_prompt)
    table.add_row("target prompts", str(len(emb.target_prompts)))
    table.add_row("classes", f"{len(emb.class_names)} ({', '.join(emb.class_names)})")
    table.add_row("embedding dim", str(emb.source.shape[0]))
    table.add_row("written", str(result.path))
    console.print(table)


def _device(device: str | None) -> str:
    """`device`, checked; by default the first GPU if there is one, else the CPU."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ClipgapError(f"unknown --device {device!r}; use cpu, cuda or cuda:N")
    if parsed.type == "cpu":
        return "cpu"
    if not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count():
        raise ClipgapError(f"--device {device} asks for a GPU this machine does not have; use --device cpu")
    return str(parsed)


@app.command("optimize-augs")
def optimize_augs_command(
    run: Annotated[Path, typer.Option("--run", help="The run directory holding the text embeddings.")],
    data: DataOption,
    form: Annotated[
        str,
        typer.Option(
            "--form",
            help="offset: CLIP the Gap's offsets A_j, added to CLIP's layer3 map (the reference, the "
            "default). style: per target prompt, CLIP's channel means and standard deviations at --stage, "
            "which a detector puts in place of each image's own (PØDA's prompt-driven instance "
            "normalisation), optimised so that CLIP embeds restyled crops as the prompt.",
        ),
    ] = "offset",
    stage: Annotated[
        str | None,
        typer.Option(
            "--stage",
            help=f"--form style only: the CLIP stage whose statistics the styles set, layer1, layer2 or "
            f"layer3. Default: {STYLE_STAGE}.",
            show_default=False,
        ),
    ] = None,
    iters: Annotated[int, typer.Option("--iters", help="Adam iterations.", callback=options.count)] = 1000,
    crops_per_iter: Annotated[
        int,
        typer.Option(
            "--crops-per-iter", help="Random crops per iteration, 15 from each image.", callback=options.count
        ),
    ] = 60,
    lr: Annotated[
        float, typer.Option("--lr", help="Adam learning rate (positive).", callback=options.positive)
    ] = 0.01,
    crop_size: Annotated[
        int,
        typer.Option(
            "--crop-size",
            help="Square crop side in px at the detector's input scale (short side 600), at most the "
            "image's short side; resized to CLIP's input size.",
            callback=options.count,
        ),
    ] = 400,
    bn_mode: Annotated[
        str | None,
        typer.Option(
            "--bn-mode",
            help="train: CLIP's BatchNorms use the statistics of each batch of crops, as the reference "
            "(the offsets' default); eval: their stored statistics (the only mode of --form style).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(
            "--seed", help="Seed of the crops; the same seed gives the same A.", callback=options.seed
        ),
    ] = 0,
    device: DeviceOption = None,
    pretrained: PretrainedFileOption = None,
    force: Annotated[bool, typer.Option("--force", help="Optimise again even if A is current.")] = False,
) -> None:
    """Learn the semantic augmentations: offsets A_j to CLIP's layer3 features that move a
    source image's embedding towards each target-domain prompt (--form offset), or per-prompt
    feature statistics at an early CLIP stage (--form style).

    Writes augs/offsets.pt (A, shape (M, C, S, S), and its spatial means; or the styles' means
    and standard deviations (M, C) and their stage), augs/report.json and augs/loss.png, and
    prints, per target prompt, how far the augmentations move held-out crops and, per target
    domain of the dataset, how much of the gap in channel statistics they close.
    """
    columns = (
        TextColumn("optimize-augs"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("optimize-augs", total=iters, loss=float("nan"))
        result = optimize_augs(
            run,
            data,
            form=form,
            stage=stage,
            iters=iters,
            crops_per_iter=crops_per_iter,
            lr=lr,
            crop_size=crop_size,
            bn_mode=bn_mode,
            seed=seed,
            device=_device(device),
            pretrained=pretrained,
            force=force,
            on_step=lambda step, loss: progress.update(task, completed=step + 1, loss=loss),
        )
    if not result.changed:
        what = "styles" if result.form == "style" else "offsets"
        console.print(f"nothing changed: the {what} in {run} are current (use --force to optimise again)")
        return
    style = result.form == "style"
    form = f" (style at {result.stage})" if style else ""
    losses = f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}"
    table = Table(title=f"semantic augmentations{form}: {losses}")
    target = "t_j" if style else "q_j"
    table.add_column("target prompt")
    table.add_column(f"cos(z_j, {target}) {'own statistics' if style else 'at A=0'}", justify="right")
    table.add_column(f"cos(z_j, {target})", justify="right")
    table.add_column("cos(z_j - z0, Δ_j)", justify="right")
    for a in result.alignment:
        table.add_row(
            a.prompt,
            f"{a.cos_to_target_before:.3f}",
            f"{a.cos_to_target_after:.3f}",
            f"{a.cos_to_direction_after:.3f}",
        )
    console.print(table)
    if result.domains:
        (_print_style_shifts if style else _print_domain_shifts)(result.domains)
    mode = "stored BatchNorm statistics" if style else f"bn mode {bn_mode or 'train'}"
    console.print(f"written: {run}/augs/offsets.pt, report.json, loss.png (held-out crops, {mode})")


def _print_style_shifts(domains: list[StyleDomainShift]) -> None:
    table = Table(
        title="do the styles move source features towards each target domain's? (the fraction of the gap "
        "closed in channel means / stds, at the styles' stage and at layer3; < 0 moved away)"
    )
    table.add_column("target domain")
    for which in ("naming prompt", "best prompt"):
        table.add_column(which)
        table.add_column("stage", justify="right")
        table.add_column("layer3", justify="right")
    for d in domains:
        cells = [d.domain]
        for shift in (d.named, d.best):
            if shift is None:
                cells += ["none", "", ""]
                continue
            cells += [shift.prompt, f"{shift.stage_mean:+.2f} / {shift.stage_std:+.2f}",
                      f"{shift.layer3_mean:+.2f} / {shift.layer3_std:+.2f}"]  # fmt: skip
        table.add_row(*cells)
    console.print(table)


def _print_domain_shifts(domains: list[DomainShift]) -> None:
    table = Table(
        title="do the offsets move source features towards each target domain's? (layer3 channel means; "
        "closed: the fraction of the gap closed, < 0 moved away; cos: of mean(A_j) with the gap)"
    )
    for column in ("target domain", "gap"):
        table.add_column(column, justify="left" if column == "target domain" else "right")
    for which in ("naming prompt", "best prompt"):
        table.add_column(which)
        table.add_column("closed", justify="right")
        table.add_column("cos", justify="right")
    for d in domains:
        named = (
            (d.named.prompt, f"{d.named.closed:+.3f}", f"{d.named.cosine:+.3f}") if d.named else ("none",) * 3
        )
        best = (d.best.prompt, f"{d.best.closed:+.3f}", f"{d.best.cosine:+.3f}")
        table.add_row(d.domain, f"{d.best.distance_before:.3f}", *named, *best)
    console.print(table)


@app.command("train", cls=_SpreadCfgOptions)
def train_command(
    run: Annotated[Path, typer.Option("--run", help="The run directory (text embeddings, offsets).")],
    data: DataOption,
    detector: Annotated[
        str,
        typer.Option(
            "--detector",
            help="clipgap (CLIP the Gap's C4 Faster R-CNN) or gridclip (GridCLIP's one-stage FCOS): "
            f"picks that detector's default config, the paper's ({', '.join(DETECTORS.values())}), or "
            "for a run on one of clipgap's CPU CLIPs that CLIP's CPU config ("
            + "; ".join(f"{clip}: {', '.join(configs.values())}" for clip, configs in CPU_DETECTORS.items())
            + ").",
        ),
    ] = "clipgap",
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            help="An MMDetection config file, or a path inside clipgap's mmconfigs/ "
            "(e.g. clipgap/faster-rcnn_clip-rn101_c4_dwd_no-aug.py, tiny/faster-rcnn_clip-tiny_c4_synth.py, "
            "tiny/gridclip_clip-tiny_fpn_synth.py). Default: --detector's config.",
            show_default=False,
        ),
    ] = None,
    gpus: Annotated[
        int,
        typer.Option(
            "--gpus",
            help="Processes per machine, one per GPU; with --device cpu, that many CPU processes (gloo).",
            callback=options.count,
        ),
    ] = 1,
    nnodes: Annotated[int, typer.Option("--nnodes", help="Machines in the job.", callback=options.count)] = 1,
    node_rank: Annotated[
        int,
        typer.Option("--node-rank", help="This machine's rank, 0..nnodes-1.", callback=options.integer(0)),
    ] = 0,
    master_addr: Annotated[
        str, typer.Option("--master-addr", help="Address of the rank-0 machine.")
    ] = "127.0.0.1",
    master_port: Annotated[
        int, typer.Option("--master-port", help="A free port on the rank-0 machine.", callback=options.port)
    ] = 29500,
    launcher: Annotated[
        str,
        typer.Option(
            "--launcher",
            help="none: this command starts the processes (torchrun for several); slurm: run it as each "
            "task of an srun job, which starts the processes.",
        ),
    ] = "none",
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="cpu, cuda or cuda:N (one process only: for several, choose their GPUs with "
            "CUDA_VISIBLE_DEVICES). Default: cuda if available, else cpu.",
            show_default=False,
        ),
    ] = None,
    amp: Annotated[
        bool, typer.Option("--amp", help="Mixed precision (AmpOptimWrapper, dynamic loss scale).")
    ] = False,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue from the last checkpoint: iteration, lr, optimiser state."),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Start over in a run that already has checkpoints.")
    ] = False,
    max_iters: Annotated[
        int | None,
        typer.Option(
            "--max-iters", help="Train this many iterations instead of the config's.", callback=options.count
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of mmengine's randomness.", callback=options.seed)
    ] = 0,
    pretrained: PretrainedFileOption = None,
    vis: Annotated[
        str,
        typer.Option(
            "--vis",
            help="Where training scalars go besides the JSON log in train/: none, or tensorboard "
            "(needs the tensorboard package).",
        ),
    ] = "none",
    cfg_options: Annotated[
        list[str] | None,
        typer.Option(
            "--cfg-options",
            help="Override config entries, key=value as in MMDetection: several after one flag or the "
            "flag repeated, e.g. --cfg-options train_dataloader.batch_size=8 train_cfg.val_interval=500.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train the CLIP the Gap or the GridCLIP detector with mmengine's Runner.

    The config is completed from the run (CLIP model, class text embeddings, semantic
    augmentations) and the dataset (classes, paths); mmengine's work directory is the run's
    train/ folder, and its checkpoints, the best by source-test mAP (VOC07 AP50) among them,
    are recorded in the manifest.
    """
    if launcher not in ("none", "slurm"):
        raise ClipgapError(f"--launcher must be none or slurm, not {launcher!r}")
    if detector not in DETECTORS:
        raise ClipgapError(f"--detector must be one of {', '.join(DETECTORS)}, not {detector!r}")
    if vis not in ("none", "tensorboard"):
        raise ClipgapError(f"--vis must be none or tensorboard, not {vis!r}")
    launch = Launch(
        gpus=gpus,
        nnodes=nnodes,
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
        launcher=launcher,
        device=device or "cuda",
    )
    # Without --device, one process may fall back to the CPU; several mean one GPU each.
    if device is not None or gpus == 1:
        launch = dataclasses.replace(launch, device=_device(device))
    config_path, which = choose_config(run, detector, config)
    console.print(which, soft_wrap=True)
    checkpoints = train(
        run,
        config_path,
        data,
        launch=launch,
        resume=resume,
        force=force,
        max_iters=max_iters,
        seed=seed,
        amp=amp,
        tensorboard=vis == "tensorboard",
        pretrained=pretrained,
        cfg_options=parse_cfg_options(cfg_options or []),
    )
    if checkpoints:
        console.print(f"checkpoints recorded in {run}/manifest.json: {', '.join(checkpoints)}")


@app.command("evaluate")
def evaluate_command(
    run: Annotated[Path, typer.Option("--run", help="The trained run directory.")],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="The dataset: a directory with clipgap-data.json. Default: the one the checkpoint was "
            "trained on.",
            show_default=False,
        ),
    ] = None,
    domain: Annotated[str, typer.Option("--domain", help="A domain of the dataset's spec, or all.")] = ALL,
    checkpoint: CheckpointOption = "best",
    metric: Annotated[
        str,
        typer.Option(
            "--metric",
            help="What the table shows: voc07 (VOC2007 11-point AP50, the papers' mAP), voc (area AP50) "
            "or coco (AP@[.5:.95]). The json holds all three.",
        ),
    ] = "voc07",
    compare: Annotated[
        list[Path] | None,
        typer.Option(
            "--compare",
            help="Other run directories to show beside this one, from their stored evaluations (repeatable).",
            show_default=False,
        ),
    ] = None,
    device: DeviceOption = None,
) -> None:
    """Score the trained detector on each domain's evaluation split (source: test, targets:
    train, as published): AP50 per class and its mean, and COCO AP; on LVIS-format data (every
    category tagged with its frequency) also LVIS AP and APr/APc/APf (needs clipgap[lvis]).

    Writes eval/<checkpoint>.json and eval/<checkpoint>.png in the run directory.
    """
    columns = (
        TextColumn("evaluate {task.fields[domain]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("evaluate", total=None, domain="")
        result = evaluate(
            run,
            data,
            domain,
            checkpoint=checkpoint,
            metric=metric,
            device=_device(device),
            on_progress=lambda name, done, total: progress.update(
                task, completed=done, total=total, domain=name
            ),
        )
    console.print(domain_table(result.report, metric))
    if (lvis := lvis_table(result.report)) is not None:
        console.print(lvis)
    console.print(f"written: {run}/{result.json_rel}, {run}/{result.chart_rel}")
    if compare:
        reports = {str(run): result.report}
        # Other runs are compared at the same kind of checkpoint; a file of this run means its best.
        which = checkpoint if checkpoint in ("best", "last") else "best"
        reports.update({str(other): stored_evaluation(other, which) for other in compare})
        console.print(compare_table(reports, metric))


@app.command("export")
def export_command(
    run: Annotated[Path, typer.Option("--run", help="The trained run directory.")],
    out: Annotated[
        Path,
        typer.Option("--out", help="The bundle directory to write (new or empty); for onnx, the .onnx file."),
    ],
    checkpoint: CheckpointOption = "best",
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="bundle (for MMDetection) or onnx (one ONNX graph for onnxruntime, with a .json beside "
            "it; needs clipgap[onnx]).",
        ),
    ] = "bundle",
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing bundle or ONNX model at --out.")
    ] = False,
) -> None:
    """Export a trained detector as a self-contained bundle that plain MMDetection runs, or as
    an ONNX model that onnxruntime runs alone.

    The bundle holds config.py (the text embeddings and augmentation means written in, no
    run-directory paths), model.pth (weights and class names), bundle.json (classes, CLIP
    model, versions, sha256) and a README; mmdet.apis.DetInferencer(model="config.py",
    weights="model.pth") loads it wherever clipgap is installed. --format onnx writes OUT.onnx
    (the classes' text embeddings, MMDetection's postprocessing and NMS in the graph) and
    OUT.json (classes, normalisation, resize rule): see docs/cli.md.
    """
    if format == "onnx":
        with console.status("exporting to ONNX (and checking it in onnxruntime)"):
            info = export(run, out, checkpoint, force=force, format=format)
        console.print(
            f"written: {out} and {out.with_suffix('.json').name} ({info['detector']}, "
            f"{len(info['classes'])} classes: {', '.join(info['classes'])}; "
            f"from {info['checkpoint']['name']})"
        )
        return
    with console.status("exporting (and checking that the bundle loads)"):
        bundle = export(run, out, checkpoint, force=force, format=format)
    info = bundle.info
    console.print(
        f"written: {out}/ ({info['detector']}, {len(bundle.classes)} classes: {', '.join(bundle.classes)}; "
        f"CLIP {describe_clip(info['clip'])}; from {info['checkpoint']['name']})"
    )


@app.command("predict")
def predict_command(
    model: Annotated[
        Path,
        typer.Argument(
            help="A bundle (clipgap export), a trained run directory, or an .onnx model (export --format "
            "onnx), which runs in onnxruntime."
        ),
    ],
    images: Annotated[
        list[Path], typer.Argument(help="Image files, or directories whose image files are all used.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Where the drawn images and the json files go.")],
    classes: Annotated[
        str | None,
        typer.Option(
            "--classes",
            help='Detect these class names instead of the trained ones, e.g. "car,bus,tram": they are '
            "encoded with the model's CLIP and class prompt (open vocabulary; text classifier only).",
            show_default=False,
        ),
    ] = None,
    score_thr: Annotated[
        float,
        typer.Option(
            "--score-thr",
            help="Keep and draw detections scoring at least this (0..1).",
            callback=options.probability,
        ),
    ] = 0.3,
    checkpoint: CheckpointOption = "best",
    pretrained: Annotated[
        Path | None,
        typer.Option(
            "--pretrained",
            help="The local CLIP weights file the model was trained with, needed for --classes when "
            "its CLIP came from a file.",
            show_default=False,
        ),
    ] = None,
    device: DeviceOption = None,
) -> None:
    """Detect objects on images: writes OUT/<image name> with the boxes drawn and
    OUT/<image stem>.json (label, score, box corners x1, y1, x2, y2 in pixels), and prints a table.

    --checkpoint applies to a run directory; a bundle has one set of weights. An .onnx model
    detects its exported classes only (no --classes), and keeps its exported score threshold.
    """
    names = parse_classes(classes) if classes is not None else None
    columns = (TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("predict", total=None)
        predictions = predict(
            model,
            images,
            out,
            classes=names,
            score_thr=score_thr,
            checkpoint=checkpoint,
            pretrained=pretrained,
            device=_device(device),
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    table = Table(title=f"detections with score >= {score_thr}")
    table.add_column("image")
    table.add_column("detections", justify="right")
    table.add_column("classes")
    for prediction in predictions:
        labels = [d["label"] for d in prediction.detections]
        counts = ", ".join(f"{name} x{labels.count(name)}" for name in dict.fromkeys(labels))
        table.add_row(prediction.image.name, str(len(labels)), counts or "-")
    console.print(table)
    console.print(f"written: {out}/ (drawn images and json, {len(predictions)} images)")


def main() -> None:
    app(prog_name="clipgap")
