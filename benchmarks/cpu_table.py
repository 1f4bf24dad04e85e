"""The paper's table at CPU scale: per-domain AP50 of the source-only baseline, the CLIP text
classifier, CLIP the Gap and GridCLIP, on the synthetic benchmark with RN-synth, over seeds.

    python benchmarks/cpu_table.py                      # the table: docs/results/cpu-table.{md,json,png}
    python benchmarks/cpu_table.py --calibrate 0.4 0.6  # the baseline row alone at each severity:
                                                        # docs/results/severity-calibration.{md,json}

It renders the benchmark (`clipgap data synth`), then for each seed runs the stages as a
user would, through their library functions: `encode-prompts` (RN-synth, the 15 default
prompts), `optimize-augs` (seeded), and for each row `train` (same seed, the row's config)
and `evaluate --domain all` (the checkpoint with the best source AP50, as the reference
selects it). Every run directory stays under --work, one directory per severity, and a cell
whose evaluation exists is not run again: an interrupted table resumes where it stopped, and
the table reuses the calibration's baseline cells at its severity. See docs/reproducing.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Row:
    """One row of the table: a detector config of clipgap's and what the row changes in it."""

    label: str
    config: str  # inside clipgap's mmconfigs/
    augs: str | None = None  # for a config with the semantic augmentation: its AUGS entry
    cfg_options: dict[str, Any] = field(default_factory=dict)
    pretrained: str = "synth"  # RN-synth's weights: the shipped ones, or "none" (random)


C4 = "tiny/faster-rcnn_clip-synth_c4"
# The style form's optimize-augs options and the detector's mixing and probability, chosen on
# the validation conditions by benchmarks/augmentation_selection.py
# (docs/results/augmentation-selection.md).
STYLE = {"stage": "layer1", "lr": 0.01, "iters": 50}
STYLE_AUGMENTATION = {"mix": True, "prob": 0.5}


def style_options(**augmentation: Any) -> dict[str, Any]:
    """The detector's cfg-options for the style augmentation's settings (mix, prob)."""
    return {f"model.backbone.augmentation.{k}": v for k, v in augmentation.items()}


STYLE_OPTIONS = style_options(**STYLE_AUGMENTATION)
# optimize-augs of the prepared runs: name -> (the run's directory, optimize_augs's options).
AUGS = {
    "offset": ("prompts", {"bn_mode": "train"}),  # the reference
    "offset-bn-eval": ("prompts-bn-eval", {"bn_mode": "eval"}),
    "style": ("prompts-style", {"form": "style", **STYLE}),
}
# Every BatchNorm of the C4 detector on CLIP's stored statistics, as its style config has them.
STORED_BN = {"model.backbone.norm_eval": True, "model.roi_head.shared_head.norm_eval": True}
GRID = "tiny/gridclip_clip-synth_fpn"
LINEAR = {"model.roi_head.bbox_head.classifier": "linear"}
ROWS = {
    # What CLIP's pretraining is worth: the same detector on RN-synth's architecture with random
    # weights (its prompts encoded by the random CLIP too, so the run names one CLIP).
    "no-clip": Row(
        "no CLIP pretraining (random RN-synth weights, linear classifier)",
        f"{C4}.py",
        cfg_options=LINEAR,
        pretrained="none",
    ),
    "linear": Row(
        "linear classifier (source-only baseline)",
        f"{C4}.py",
        cfg_options=LINEAR,
    ),  # fmt: skip
    "clip-t": Row("clip-t: text classifier", f"{C4}.py"),
    "clip-t+aug": Row("clip-t + semantic augmentations (CLIP the Gap)", f"{C4}_aug.py", augs="offset"),
    # CLIP the Gap with its offsets optimised under CLIP's stored BatchNorm statistics, so that
    # their spatial mean, the part the detector adds, gets a gradient (docs/method.md).
    "clip-t+aug-bn-eval": Row(
        "clip-t + semantic augmentations, optimize-augs --bn-mode eval", f"{C4}_aug.py", augs="offset-bn-eval"
    ),  # fmt: skip
    # The style form (PØDA's PIN) keeps every BatchNorm on stored statistics (docs/method.md);
    # its control is clip-t in that mode without augmentation.
    "clip-t+stored-bn": Row(
        "clip-t, BatchNorm on stored statistics (the style row's mode)", f"{C4}.py", cfg_options=STORED_BN
    ),
    "clip-t+style": Row(
        "clip-t + style augmentations (optimize-augs --form style)",
        f"{C4}_style.py",
        augs="style",
        cfg_options=STYLE_OPTIONS,
    ),
    "gridclip": Row("GridCLIP", f"{GRID}.py"),
    "gridclip+aug": Row("GridCLIP + semantic augmentations", f"{GRID}_aug.py", augs="offset"),
    "gridclip+style": Row(
        "GridCLIP + style augmentations",
        f"{GRID}_aug.py",
        augs="style",
        cfg_options=STYLE_OPTIONS,
    ),
}
# The paper's table, and the augmentation forms' (--forms: every form in both detectors, and
# the style row's control).
DEFAULT_ROWS = ["no-clip", "linear", "clip-t", "clip-t+aug", "clip-t+aug-bn-eval", "gridclip", "gridclip+aug"]
FORM_ROWS = ["clip-t", "clip-t+aug", "clip-t+aug-bn-eval", "clip-t+stored-bn", "clip-t+style", "gridclip"]
FORM_ROWS += ["gridclip+aug", "gridclip+style"]
BASELINE = "linear"
# Validation conditions (`data synth --extra-domain`): other conditions of the grid, rendered
# beside the benchmark's five domains and scored in every cell. The augmentation forms'
# settings are chosen on them alone, never on the four benchmark targets (docs/reproducing.md).
VALIDATION = ("day_snow", "evening_cloudy", "night_fog", "evening_stormy")


@dataclass(frozen=True)
class Setting:
    """What the whole table shares: the benchmark and the optimize-augs schedule."""

    images_per_domain: int = 200  # a target's train list, which it is scored on: 150 images
    source_images: int = 600  # the source's test list: 150 images
    size: int = 256  # the C4 detector's stride-16 map resolves the smallest objects (about 26 px)
    severity: float | None = None  # None: `data synth`'s default
    data_seed: int = 0
    aug_iters: int = 200
    aug_crops: int = 30
    max_iters: int | None = None  # None: the configs' own schedule
    validation: tuple[str, ...] = VALIDATION

    def synth_options(self) -> dict[str, Any]:
        from clipgap_cli.data.synth import SEVERITY

        return dict(
            seed=self.data_seed,
            images_per_domain=self.images_per_domain,
            source_images=self.source_images,
            size=self.size,
            severity=SEVERITY if self.severity is None else self.severity,
            extra_domains=list(self.validation),
        )


QUICK = Setting(
    images_per_domain=12,
    source_images=12,
    size=96,
    aug_iters=2,
    aug_crops=6,
    max_iters=4,
    validation=VALIDATION[2:3],
)


def prepare_data(work: Path, setting: Setting) -> Path:
    """The rendered benchmark under `work`, rendered again only if its options changed."""
    from clipgap_cli.data.synth import synthesize

    data = work / "data"
    options = setting.synth_options()
    stamp = data / "synth-options.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == options):
        shutil.rmtree(data, ignore_errors=True)
        synthesize(data, **options)
        stamp.write_text(json.dumps(options))
    return data


def prepare_seed(
    work: Path, data: Path, seed: int, setting: Setting, augs: str | None, pretrained: str = "synth"
) -> Path:
    """A run directory with the prompts' text embeddings by RN-synth with `pretrained` weights
    and, unless `augs` is None, the seed's augmentations optimised as AUGS[augs] says."""
    from clipgap_cli.clip.prompts import DEFAULT_PROMPTS_FILE, read_prompts
    from clipgap_cli.stages.encode_prompts import encode_prompts
    from clipgap_cli.stages.optimize_augs import optimize_augs

    _threads()
    name, options = AUGS[augs] if augs else ("prompts", {})
    run = work / f"seed{seed}" / (name if pretrained == "synth" else f"{name}-{pretrained}")
    encode_prompts(run, read_prompts(DEFAULT_PROMPTS_FILE), clip="RN-synth", pretrained=pretrained)
    if augs:
        # A form's own iterations (STYLE's) never exceed the setting's: a quick run stays quick.
        options = options | {"iters": min(options.get("iters", setting.aug_iters), setting.aug_iters)}
        optimize_augs(run, data, crops_per_iter=setting.aug_crops, seed=seed, **options)
    return run


def _threads() -> None:
    """The torch threads of a worker: 2 // --jobs, so that the cells never oversubscribe the cores."""
    import torch

    torch.set_num_threads(int(os.environ.get("CLIPGAP_TABLE_THREADS", "2")))


def severity_dir(work: Path, setting: Setting) -> Path:
    """Where the table and the calibration keep one severity's benchmark and cells: the
    calibration's baseline cells at the default severity are the table's."""
    from clipgap_cli.data.synth import SEVERITY

    return work / f"severity-{SEVERITY if setting.severity is None else setting.severity:g}"


def run_cell(
    prepared: Path,
    cell: Path,
    data: Path,
    row: Row,
    seed: int,
    max_iters: int | None,
    domains: list[str] | None = None,
) -> dict:
    """Train and evaluate one row for one seed in the run directory `cell` (a copy of
    `prepared`) on `domains` (None: every domain of `data`); returns the evaluation report
    (and keeps it as `cell/result.json`). A trained cell only scores the domains it lacks."""
    from clipgap_cli.data.spec import load_spec
    from clipgap_cli.rundir import atomic_write
    from clipgap_cli.stages.evaluate import ALL, evaluate
    from clipgap_cli.stages.train import Launch, resolve_config, train

    _threads()
    done = cell / "result.json"
    wanted = domains or [d.name for d in load_spec(data).domains]
    report = json.loads(done.read_text()) if done.is_file() else None
    if report is not None and set(wanted) <= set(report["domains"]):
        return report | {"kept": True}
    if report is None:
        shutil.rmtree(cell, ignore_errors=True)
        shutil.copytree(prepared, cell)
        start = time.perf_counter()
        train(cell, resolve_config(row.config), data, launch=Launch(device="cpu"), seed=seed,
              max_iters=max_iters, cfg_options=row.cfg_options)  # fmt: skip
        seconds = {"train": time.perf_counter() - start, "evaluate": 0.0}
    else:
        seconds = report["seconds"]
    start = time.perf_counter()
    # A new cell scores every wanted domain with one detector; a kept one only those it lacks.
    have = set(report["domains"]) if report else set()
    missing = [ALL] if report is None and domains is None else [d for d in wanted if d not in have]
    for domain in missing:
        scored = evaluate(cell, data, domain, checkpoint="best", device="cpu").report
    report = scored | {"seconds": seconds}
    report["seconds"]["evaluate"] += time.perf_counter() - start
    atomic_write(done, lambda tmp: tmp.write_text(json.dumps(report, indent=1)))
    return report


def build(work: Path, rows: list[str], seeds: list[int], setting: Setting, jobs: int) -> dict:
    """Every (row, seed) cell's evaluation, and the seeds' optimize-augs reports."""
    start = time.perf_counter()
    data = prepare_data(work, setting)
    # One prepared run per seed, augmentations (AUGS) and CLIP weights; the rows without
    # augmentation copy the first augmentations' (or a run of text embeddings alone).
    modes = list(dict.fromkeys(ROWS[r].augs for r in rows if ROWS[r].augs)) or [None]

    def prepared_for(r: str) -> tuple[str | None, str]:
        row = ROWS[r]
        return (row.augs or modes[0]) if row.pretrained == "synth" else None, row.pretrained

    needed = [(s, *k) for s in seeds for k in dict.fromkeys(prepared_for(r) for r in rows)]
    # The baseline's cells first: the severity is checked on them before any other row's result.
    order = sorted(rows, key=lambda r: r != BASELINE)
    cells = {(r, s): work / f"seed{s}" / r for r in order for s in seeds}
    os.environ["CLIPGAP_TABLE_THREADS"] = str(max(1, 2 // jobs))
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool, _progress() as bar:
        # The seeds' prompts and offsets first, as many at once as cells.
        task = bar.add_task("prepared runs (seed x mode)", total=len(needed))
        jobs_of = {pool.submit(prepare_seed, work, data, s, setting, *k): (s, *k) for s, *k in needed}
        prepared = {}
        for future in as_completed(jobs_of):
            prepared[jobs_of[future]] = future.result()
            bar.advance(task)
        prepared_at = time.perf_counter()
        cell_of = {}
        for (r, s), cell in cells.items():
            run = prepared[s, *prepared_for(r)]
            cell_of[pool.submit(run_cell, run, cell, data, ROWS[r], s, setting.max_iters)] = (r, s)
        task = bar.add_task("cells (row x seed)", total=len(cell_of))
        results = {}
        for future in as_completed(cell_of):
            results[cell_of[future]] = future.result()
            bar.advance(task)
        results = {key: results[key] for key in cells}
    augs = {  # augmentations (AUGS) -> seed -> the optimize-augs diagnostic
        m: {
            s: json.loads((prepared[s, m, "synth"] / "augs" / "report.json").read_text())["target_domains"]
            for s in seeds
        }
        for m in modes
        if m
    }
    return {
        "setting": setting.synth_options() | {"aug_iters": setting.aug_iters, "aug_crops": setting.aug_crops},
        "results": results,
        "augs": augs,
        "seconds": {"prepare": prepared_at - start, "total": time.perf_counter() - start},
    }


def _progress():
    """A bar over the table's cells with the time left, estimated from the cells done so far
    (cells kept from an interrupted build count as done at once)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, TextColumn("left"), TimeRemainingColumn(), transient=False)


# -- the summary ---------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(built: dict, rows: list[str], seeds: list[int]) -> dict:
    """Per row and domain, the mean and std over seeds of VOC07 AP50 (in %), the benchmark
    targets' mean and the validation conditions' mean."""
    first = next(iter(built["results"].values()))
    domains = list(first["domains"])
    validation = [d for d in domains if d in built["setting"]["extra_domains"]]
    targets = [d for d in domains if first["domains"][d]["role"] == "target" and d not in validation]
    sizes = {d: first["domains"][d]["images"] for d in domains}
    groups = {"targets": targets} | ({"validation": validation} if validation else {})
    table = {}
    for r in rows:
        per_seed = {
            d: [100 * built["results"][r, s]["domains"][d]["voc07"]["mAP"] for s in seeds] for d in domains
        }
        for name, group in groups.items():
            per_seed[name] = [statistics.fmean(per_seed[d][i] for d in group) for i in range(len(seeds))]
        table[r] = {d: mean_std(v) for d, v in per_seed.items()} | {"per_seed": per_seed}
    return {"domains": domains, "targets": targets, "validation": validation, "images": sizes, "rows": table}


def columns(summary: dict) -> list[str]:
    """The table's columns: the source, the targets, their mean, then the validation
    conditions and theirs."""
    validation = summary.get("validation", [])
    benchmark = [d for d in summary["domains"] if d not in validation]
    return [*benchmark, "targets", *validation, *(["validation"] if validation else [])]


_MEANS = {"targets": "targets' mean", "validation": "validation's mean"}


def retention(summary: dict, row: str = BASELINE) -> dict[str, float | None]:
    """The share of the row's source AP50 each target keeps (mean over seeds), and their mean."""
    source = summary["domains"][0]
    scores = summary["rows"][row]
    if scores[source][0] == 0:  # nothing learned on the source: no share of it to keep
        return {d: None for d in [*summary["targets"], "targets"]}
    kept = {d: scores[d][0] / scores[source][0] for d in summary["targets"]}
    return kept | {"targets": scores["targets"][0] / scores[source][0]}


def diagnostic(augs: dict) -> list[dict]:
    """Per target domain, over seeds: the gap, the naming prompt's and the best prompt's
    fraction closed and cosine (mean and std), and the prompt that was best most often."""
    out = []
    seeds = list(augs)
    for k, entry in enumerate(augs[seeds[0]]):
        per_seed = [augs[s][k] for s in seeds]
        named = [d["named"] for d in per_seed if d["named"]]
        best_prompts = [d["best"]["prompt"] for d in per_seed]
        out.append(
            {
                "domain": entry["domain"],
                "gap": mean_std([d["best"]["distance_before"] for d in per_seed]),
                "named_prompt": named[0]["prompt"] if named else None,
                "named_closed": mean_std([n["closed"] for n in named]) if named else None,
                "named_cosine": mean_std([n["cosine"] for n in named]) if named else None,
                "best_prompt": max(set(best_prompts), key=best_prompts.count),
                "best_closed": mean_std([d["best"]["closed"] for d in per_seed]),
                "best_cosine": mean_std([d["best"]["cosine"] for d in per_seed]),
                "best_size": mean_std([d["best"]["size"] for d in per_seed]),
            }
        )
    return out


STATISTICS = ("stage_mean", "stage_std", "layer3_mean", "layer3_std")


def statistics_diagnostic(augs: dict) -> list[dict]:
    """Per target domain, over seeds: the fractions of the channel statistics' gap that the
    augmentation of the domain's naming prompt closes (`StatisticsShift`, mean and std); the
    offsets' report keeps them under "statistics", the styles' under "prompts"."""
    out = []
    seeds = list(augs)
    for k, entry in enumerate(augs[seeds[0]]):
        prompt = entry["named"]["prompt"] if entry["named"] else None  # None: no prompt names it
        named = [
            next(x for x in augs[s][k].get("statistics", augs[s][k]["prompts"]) if x["prompt"] == prompt)
            for s in seeds
            if prompt
        ]
        out.append({"domain": entry["domain"], "prompt": prompt}
                   | {f: mean_std([n[f] for n in named]) if named else None for f in STATISTICS})  # fmt: skip
    return out


def statistics_markdown(stats: dict[str, list[dict]]) -> list[str]:
    """One table: a row per form and domain."""
    lines = [
        "| augmentations | domain | naming prompt | μ closed at the stage | σ closed at the stage "
        "| μ closed at layer3 | σ closed at layer3 |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, domains in stats.items():
        label = {"offset": "offsets (reference)", "offset-bn-eval": "offsets, --bn-mode eval"}.get(
            mode, f"style at {STYLE['stage']}"
        )
        for d in domains:
            cells = [_pm(d[f], 2) if d[f] else "–" for f in STATISTICS]
            lines.append(f"| {label} | {d['domain']} | {d['prompt'] or 'none'} | " + " | ".join(cells) + " |")
    return lines


def _share(kept: float | None) -> str:
    return "– (source AP50 0)" if kept is None else f"{100 * kept:.0f} %"


def _pm(value: tuple[float, float], digits: int = 1) -> str:
    return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def table_markdown(summary: dict, rows: list[str]) -> list[str]:
    shown = columns(summary)
    head = ["row", *(f"{c}*" if i == 0 else _MEANS.get(c, c) for i, c in enumerate(shown))]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {ROWS[r].label} | " + " | ".join(_pm(summary["rows"][r][c]) for c in shown) + " |")
    return lines


def diagnostic_markdown(diag: list[dict]) -> list[str]:
    lines = [
        "| target domain | gap \\|μ_t − μ_s\\| | naming prompt | closed | cos | best prompt | closed | cos |"
        " \\|mean(A_j)\\| / gap |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in diag:
        named = (
            [d["named_prompt"], _pm(d["named_closed"], 3), _pm(d["named_cosine"], 3)]
            if d["named_prompt"]
            else ["none of the prompts", "–", "–"]
        )
        best = [d["best_prompt"], _pm(d["best_closed"], 3), _pm(d["best_cosine"], 3), _pm(d["best_size"], 3)]
        lines.append(f"| {d['domain']} | {_pm(d['gap'], 3)} | " + " | ".join(named + best) + " |")
    return lines


def write_chart(path: Path, summary: dict, rows: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = columns(summary)
    fig, ax = plt.subplots(figsize=(15, 4), dpi=100)
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        means = [summary["rows"][r][c][0] for c in shown]
        stds = [summary["rows"][r][c][1] for c in shown]
        xs = [x + (i - (len(rows) - 1) / 2) * width for x in range(len(shown))]
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=ROWS[r].label)
    ax.set_xticks(range(len(shown)), [f"{c}*" if j == 0 else _MEANS.get(c, c) for j, c in enumerate(shown)],
                  rotation=20, fontsize=8)  # fmt: skip
    ax.set_ylabel("VOC07 AP50 (%)")
    ax.set_title(f"{title} (synthetic benchmark, RN-synth; mean ± std over seeds)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1))  # beside the bars, not over them
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


# -- the two commands ----------------------------------------------------------------------


def command() -> str:
    """This command as run, less where it keeps its files (--work, --out)."""
    script = Path(sys.argv[0]).resolve()
    words, skip = ["python", str(script.relative_to(ROOT) if script.is_relative_to(ROOT) else script)], False
    for word in sys.argv[1:]:
        if not skip and word not in ("--work", "--out"):
            words.append(word)
        skip = word in ("--work", "--out")
    return " ".join(words)


SHARED = 0.05  # the share of the CPUs' time taken by other processes that makes the machine shared


def cpu_seconds() -> tuple[float, float, float]:
    """(wall seconds, CPU seconds the whole machine has used, CPU seconds of this process and
    its ended children): two readings tell how much of the machine other processes took."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    own = os.times()
    return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), sum(own[:4])


def built_in(start: tuple[float, float, float]) -> str:
    """`Built in 39.1 min with `...` on 2 CPUs, not shared (other processes: 1 % of their time).`,
    since `start`, a reading of `cpu_seconds`."""
    wall, machine, own = (end - begin for begin, end in zip(start, cpu_seconds(), strict=True))
    cpus = os.cpu_count() or 1
    others = max(machine - own, 0) / (wall * cpus)
    shared = "shared" if others >= SHARED else "not shared"
    return (
        f"Built in {wall / 60:.1f} min with `{command()}` on {cpus} CPUs, {shared} "
        f"(other processes: {100 * others:.0f} % of their time)."
    )


def kept_note(reports: list[dict]) -> str:
    """What the `Built in` line leaves out when cells were kept from an earlier, interrupted
    build: how many, and the training and evaluation time they took then."""
    kept = [r for r in reports if r.get("kept")]
    if not kept:
        return ""
    minutes = sum(r["seconds"]["train"] + r["seconds"]["evaluate"] for r in kept) / 60
    return (
        f" {len(kept)} of {len(reports)} cells were kept from an earlier build; they had taken "
        f"{minutes:.1f} min of training and evaluation, summed over the cells."
    )


def write(out: Path, name: str, payload: dict, markdown: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (out / f"{name}.md").write_text("\n".join(markdown) + "\n")


def table(args: argparse.Namespace, setting: Setting) -> None:
    start = cpu_seconds()
    built = build(severity_dir(args.work, setting), args.rows, args.seeds, setting, args.jobs)
    summary = summarise(built, args.rows, args.seeds)
    diag = {mode: diagnostic(augs) for mode, augs in built["augs"].items() if mode.startswith("offset")}
    stats = {mode: statistics_diagnostic(augs) for mode, augs in built["augs"].items()}
    kept = retention(summary) if BASELINE in args.rows else {}
    validation = summary["validation"]
    md = [
        f"# {args.title}",
        "",
        f"VOC07 11-point AP50 (%), mean ± std over seeds {', '.join(map(str, args.seeds))}; `*` the source "
        "domain, scored on its test list, the targets on their train lists"
        + (f"; the validation conditions ({', '.join(validation)}) likewise" if validation else "")
        + f". Images scored: {', '.join(f'{d} {n}' for d, n in summary['images'].items())}.",
        "",
        *table_markdown(summary, args.rows),
        "",
    ]
    if kept:
        md += [
            "The baseline keeps "
            + ", ".join(f"{d} {_share(v)}" for d, v in kept.items() if d != "targets")
            + f" of its source AP50 (targets' mean {_share(kept['targets'])}).",
            "",
        ]
    for mode, domains in diag.items():
        md += [
            "## Do the offsets move source features towards the target domains?"
            + ("" if mode == "offset" else " (optimize-augs --bn-mode eval)"),
            "",
            "Layer3 channel means of source crops plus mean(A_j) against those of each target domain's "
            "crops (`optimize-augs`'s report; mean ± std over the seeds). closed: the fraction of the "
            "gap closed (0 before optimisation, < 0 moved away); cos: of mean(A_j) with the gap.",
            "",
            *diagnostic_markdown(domains),
            "",
        ]
    if any(mode == "style" for mode in stats):
        md += [
            "## Channel statistics: the fraction of the source→target gap each form closes",
            "",
            "For the prompt that names each domain (`optimize-augs`'s report; mean ± std over the seeds): "
            "the fraction of the gap between source and target crops' per-channel means (μ) and standard "
            "deviations (σ) closed (0 nothing, 1 all of it, < 0 moved away), at the stage where the form "
            "acts and at layer3.",
            "",
            *statistics_markdown(stats),
            "",
        ]
    footer = built_in(start) + kept_note(list(built["results"].values()))
    md += [f"Setting: {json.dumps(built['setting'])}. {footer}"]
    payload = {"setting": built["setting"], "seeds": args.seeds, "summary": summary, "retention": kept,
               "diagnostic": diag, "statistics": stats, "seconds": built["seconds"]}  # fmt: skip
    write(args.out, args.name, payload, md)
    write_chart(args.out / f"{args.name}.png", summary, args.rows, args.title)
    print("\n".join(md))


def calibrate(args: argparse.Namespace, setting: Setting) -> None:
    """The baseline row alone, at each severity: how much of its source AP50 the targets keep."""
    from dataclasses import replace

    summaries, reports = {}, []
    md = [
        "# Calibrating the synthetic benchmark's severity",
        "",
        f"The source-only baseline ({ROWS[BASELINE].label}), VOC07 AP50 (%), mean ± std over seeds "
        f"{', '.join(map(str, args.seeds))}, and the share of its source AP50 each target keeps.",
        "",
    ]
    start = cpu_seconds()
    for severity in args.calibrate:
        level = replace(setting, severity=severity)
        built = build(severity_dir(args.work, level), [BASELINE], args.seeds, level, args.jobs)
        reports += built["results"].values()
        summary = summarise(built, [BASELINE], args.seeds)
        kept = retention(summary)
        summaries[severity] = {"summary": summary, "retention": kept}
        md += [f"## severity {severity:g}", "", *table_markdown(summary, [BASELINE]), ""]
        md += ["kept: " + ", ".join(f"{d} {_share(v)}" for d, v in kept.items()), ""]
    md += [built_in(start) + kept_note(reports)]
    write(args.out, "severity-calibration", {"seeds": args.seeds, "severities": summaries}, md)
    print("\n".join(md))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "cpu-table",
                        help="where the dataset and every run directory are kept")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), help="default: the paper's table's")
    parser.add_argument("--forms", action="store_true",
                        help="the augmentation forms' table: its rows, outputs and heading")  # fmt: skip
    parser.add_argument(
        "--name", help="the outputs' file name, without suffix (cpu-table, augmentation-forms)"
    )
    parser.add_argument("--title", help="the outputs' heading")
    parser.add_argument("--jobs", type=int, default=2, help="cells trained at once (threads: 2 // jobs)")
    parser.add_argument("--calibrate", type=float, nargs="+", metavar="SEVERITY",
                        help="measure the baseline row alone at these severities")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny data, 4 iterations")
    args = parser.parse_args()
    args.rows = args.rows or (FORM_ROWS if args.forms else DEFAULT_ROWS)
    args.name = args.name or ("augmentation-forms" if args.forms else "cpu-table")
    args.title = args.title or (
        "Semantic augmentation forms at CPU scale" if args.forms else "The paper's table at CPU scale"
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setting = QUICK if args.quick else Setting()
    if args.calibrate:
        calibrate(args, setting)
    else:
        table(args, setting)


if __name__ == "__main__":
    main()
