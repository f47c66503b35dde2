"""The seed's experiments: bounded runs tracked in MLflow, and ``docs/experiments.md`` generated from them.

    python -m trainer.experiments run [--study NAME ...] [--data DIR] [--densenet-weights FILE] [--gpu]
    python -m trainer.experiments report [--out docs/experiments.md]

Every run is tagged ``cxr.study`` / ``cxr.variant`` in the ``cxr-experiments`` MLflow experiment; the report
reads only MLflow (no numbers are typed by hand) and draws one PNG per study. The recipe study's rows are
also kept in ``docs/experiments/recipes-cv.json`` (merged with MLflow's on every report), so its table
survives the MLflow instance that ran it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import numpy as np

from trainer.settings import DEFAULT_DATA, TrainerSettings, load_trainer_settings

logger = logging.getLogger(__name__)

EXPERIMENT = "cxr-experiments"
DOCS = Path(__file__).resolve().parents[1] / "docs"


@dataclass(frozen=True)
class Variant:
    study: str
    variant: str
    options: dict[str, Any] = field(default_factory=dict)


# Bounded for the 2-core CPU: 128 px, a few steps per epoch. The GPU study uses 224 px and larger batches.
CPU_BASE: dict[str, Any] = {
    "input_size": 128,
    "batch_size": 8,
    "epochs": 2,
    "max_steps_per_epoch": 20,
    "progress": False,
}
STUDIES: dict[str, list[Variant]] = {
    "densenet-init": [
        Variant("densenet-init", "scratch", {"lr": 1e-3}),
        Variant("densenet-init", "imagenet", {"lr": 1e-4, "weights": "<densenet-weights>"}),
    ],
    "vit-finetune": [
        Variant("vit-finetune", "full", {"architecture": "vit-tiny", "finetune": "full", "lr": 5e-4}),
        Variant("vit-finetune", "last-2", {"architecture": "vit-tiny", "finetune": "last-k", "last_k": 2, "lr": 5e-4}),
        Variant("vit-finetune", "lora-r8", {"architecture": "vit-tiny", "finetune": "lora", "lora_rank": 8, "lr": 5e-4}),
    ],
    "ddp-workers": [
        Variant("ddp-workers", "1 worker x 2 CPU", {"num_workers": 1, "cpus_per_worker": 2, "epochs": 1, "max_steps_per_epoch": 12}),
        Variant("ddp-workers", "2 workers x 1 CPU", {"num_workers": 2, "cpus_per_worker": 1, "epochs": 1, "max_steps_per_epoch": 12}),
    ],
}  # fmt: skip
GPU_BASE: dict[str, Any] = {
    "input_size": 224, "batch_size": 32, "epochs": 1, "max_steps_per_epoch": 40, "num_workers": 1,
    "use_gpu": True, "cpus_per_worker": 4, "loader_workers": 4, "progress": False, "lr": 1e-4,
}  # fmt: skip
GPU_STUDIES: dict[str, list[Variant]] = {
    "amp": [Variant("amp", amp, {"amp": amp}) for amp in ("off", "bf16", "fp16")],
}


def run_studies(
    *, names: Sequence[str], data: Path, settings: TrainerSettings, densenet_weights: Path | None, gpu: bool
) -> list[str]:
    """Run each variant of the named studies (``register=False``: experiments never become challengers)."""
    from trainer.config import TrainConfig
    from trainer.train import run_training

    catalogue, base = (GPU_STUDIES, GPU_BASE) if gpu else (STUDIES, CPU_BASE)
    run_ids = []
    for name in names:
        for variant in catalogue[name]:
            options = {**base, **variant.options}
            if options.get("weights") == "<densenet-weights>":
                if densenet_weights is None:
                    logger.warning("skipped: no --densenet-weights file", extra={"variant": variant.variant})
                    continue
                options["weights"] = str(densenet_weights)
            cfg = TrainConfig.model_validate(options)
            outcome = run_training(
                cfg=cfg,
                data=[data],
                settings=settings,
                experiment=EXPERIMENT,
                run_name=f"{variant.study}/{variant.variant}",
                register=False,
                tags={"cxr.study": variant.study, "cxr.variant": variant.variant},
            )
            run_ids.append(outcome.run_id)
    return run_ids


@dataclass(frozen=True)
class Row:
    study: str
    variant: str
    values: dict[str, float]
    params: dict[str, str]
    started: int


def _finished_runs(settings: TrainerSettings, experiment_name: str, also: str = "") -> tuple[Any, list[Any]]:
    """(client, the experiment's finished runs matching ``also``); no runs when the experiment is missing."""
    from trainer import tracking

    client = tracking.client_for(settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return client, []
    query = "attributes.status = 'FINISHED'" + (f" and {also}" if also else "")
    return client, list(client.search_runs([experiment.experiment_id], filter_string=query, max_results=500))


def collect(settings: TrainerSettings) -> list[Row]:
    client, runs = _finished_runs(settings, EXPERIMENT)
    latest: dict[tuple[str, str], Row] = {}
    for run in runs:
        study, variant = run.data.tags.get("cxr.study"), run.data.tags.get("cxr.variant")
        if not study or not variant:
            continue
        values = dict(run.data.metrics)
        # The last epoch's throughput: the first one also pays for warm-up (allocations, thread pools).
        for key in ("images_per_second", "epoch_seconds", "peak_memory_mb"):
            history = client.get_metric_history(run.info.run_id, key)
            if history:
                values[key] = max(history, key=lambda m: m.step).value
        row = Row(study, variant, values, dict(run.data.params), run.info.start_time)
        if (study, variant) not in latest or latest[(study, variant)].started < row.started:
            latest[(study, variant)] = row
    return sorted(latest.values(), key=lambda r: (r.study, r.started))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _table(rows: list[Row]) -> list[str]:
    lines = [
        "| variant | workers x CPUs | trainable params (fraction) | images/s | epoch s | peak memory MB / worker | val macro AUROC | val abnormal AUROC | sensitivity / specificity | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        v, p = r.values, r.params
        fraction = float(p.get("trainable_fraction", "nan"))
        lines.append(
            f"| {r.variant} | {p.get('num_workers')} x {p.get('cpus_per_worker')} "
            f"| {int(p.get('trainable_params', 0)):,} ({100 * fraction:.2f}%) "
            f"| {_fmt(v.get('images_per_second'), 1)} | {_fmt(v.get('epoch_seconds'), 1)} "
            f"| {_fmt(v.get('peak_memory_mb'), 0)} | {_fmt(v.get('final_val_auroc_macro'))} "
            f"| {_fmt(v.get('final_val_auroc_abnormal'))} "
            f"| {_fmt(v.get('final_val_sensitivity'), 2)} / {_fmt(v.get('final_val_specificity'), 2)} "
            f"| {_fmt(v.get('train_seconds'), 0)} |"
        )
    return lines


def _plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    from trainer import plots  # noqa: F401  (selects the headless backend)

    names = [r.variant for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, label in zip(
        axes,
        ("images_per_second", "peak_memory_mb", "final_val_auroc_macro"),
        ("images / s (last epoch)", "peak memory (MB)", "val macro AUROC"),
        strict=True,
    ):
        ax.bar(names, [r.values.get(key, float("nan")) for r in rows], color="#4C72B0")
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=7, rotation=15)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


NOTES: dict[str, str] = {
    "densenet-init": (
        "DenseNet121 from random initialisation vs ImageNet weights. No ImageNet weights file exists on this "
        "machine (nothing is downloaded), so only the scratch variant ran unless a row for `imagenet` is shown; "
        "`python -m trainer.experiments run --study densenet-init --densenet-weights densenet121-a639ec97.pth` "
        "adds it."
    ),
    "vit-finetune": (
        "ViT-Tiny/16 at 128 px: full fine-tuning, the last 2 blocks (+ final norm and head), LoRA rank 8 on the "
        "fused qkv projections (+ head). **No pretrained ViT weights are available here**, so every variant starts "
        "from random weights: trainable fraction, speed and memory are the findings; the AUROCs after 40 steps are "
        "not a verdict on the fine-tuning methods (with frozen random layers they cannot be)."
    ),
    "ddp-workers": (
        "Throughput of DDP over gloo on the 2-core CPU, the same two cores either way: one worker with 2 threads "
        "vs two workers with one thread each (global batch 8 vs 16). images/s counts every worker's images."
    ),
    "amp": (
        "AMP vs FP32 on one GPU (`trainer/gpu.sh`): DenseNet121 at 224 px, batch 32, 40 steps. Peak memory is "
        "the CUDA allocator's."
    ),
}


def write_report(rows: list[Row], out: Path) -> Path:
    figures = out.parent / "experiments"
    lines = [
        "# Experiments",
        "",
        f"Generated by `python -m trainer.experiments report` from the MLflow experiment `{EXPERIMENT}` "
        f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC); rerun `python -m trainer.experiments run` to refresh. "
        "Data: the public sample set (435 training / 99 validation images, patient-level split). All runs are "
        "bounded (a few steps at small input size) so that they fit a shared 2-core CPU: they measure the "
        "machinery (trainable fraction, throughput, memory), not the accuracy a full training would reach. "
        "The CPU was shared with other engineers' test runs, so speeds vary by about 30% between runs. "
        "images/s is the last epoch's over all workers; peak memory is the largest worker's (RSS on CPU). "
        "Metric definitions: `docs/training.md`.",
        "",
    ]
    for study in [*STUDIES, *GPU_STUDIES]:
        lines += [f"## {study}", "", NOTES.get(study, ""), ""]
        chosen = [r for r in rows if r.study == study]
        if not chosen:
            lines += [
                "Not run yet in this MLflow instance." + (" (Needs a GPU.)" if study in GPU_STUDIES else ""),
                "",
            ]
            continue
        cfg = chosen[0].params
        lines += [
            f"Setup: {cfg.get('architecture')} at {cfg.get('input_size')} px, batch {cfg.get('batch_size')} per "
            f"worker, {cfg.get('epochs')} epoch(s) of at most {cfg.get('max_steps_per_epoch')} steps.",
            "",
            *_table(chosen),
            "",
        ]
        _plot(chosen, figures / f"{study}.png", study)
        lines += [f"![{study}](experiments/{study}.png)", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out


@click.group()
def main() -> None:
    """Run the seed's experiments and write docs/experiments.md from MLflow."""
    logging.basicConfig(level=logging.INFO)


@main.command("run")
@click.option(
    "--study", "studies", multiple=True, help="Default: every CPU study (or every GPU study with --gpu)."
)
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False), default=DEFAULT_DATA)
@click.option(
    "--densenet-weights", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None
)
@click.option("--gpu", is_flag=True)
def run_command(studies: tuple[str, ...], data: Path, densenet_weights: Path | None, gpu: bool) -> None:
    names = list(studies) or list(GPU_STUDIES if gpu else STUDIES)
    run_ids = run_studies(
        names=names, data=data, settings=load_trainer_settings(), densenet_weights=densenet_weights, gpu=gpu
    )
    click.echo(f"{len(run_ids)} run(s) in MLflow experiment {EXPERIMENT}")


RECIPE_EXPERIMENT = "cxr-recipes"


@main.command("cv")
@click.option(
    "--recipe", "recipes", multiple=True, required=True, help="Recipes to compare (trainer/recipes.py)."
)
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True)
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False), default=DEFAULT_DATA)
def cv_command(recipes: tuple[str, ...], folds: int, data: Path) -> None:
    """The recipe study: K-fold cross-validation of each recipe, tracked in MLflow (``cxr-recipes``)."""
    from trainer.config import TrainConfig
    from trainer.cv import run_cv
    from trainer.recipes import recipe

    settings = load_trainer_settings()
    for name in recipes:
        cfg = TrainConfig.model_validate({**recipe(name), "progress": True})
        result = run_cv(
            cfg=cfg, k=folds, data=[data], settings=settings, experiment=RECIPE_EXPERIMENT, run_name=name,
            tags={"cxr.study": "recipes", "cxr.variant": name, "cxr.recipe": name},
        )  # fmt: skip
        abnormal = result.summary["auroc_abnormal"]
        click.echo(f"{name}: abnormal AUROC {abnormal['mean']:.3f} ± {abnormal['sd']:.3f}")


@dataclass(frozen=True)
class CVRow:
    recipe: str
    metrics: dict[str, float]
    params: dict[str, str]
    folds: dict[str, list[float]]  # per-fold values of the summary metrics, by fold number order
    started: int


def collect_cv(settings: TrainerSettings) -> list[CVRow]:
    """The newest finished cross-validation of each recipe in ``cxr-recipes``."""
    client, runs = _finished_runs(settings, RECIPE_EXPERIMENT, "tags.`cxr.study` = 'recipes'")
    latest: dict[str, CVRow] = {}
    for run in runs:
        recipe_name = run.data.tags.get("cxr.recipe")
        if not recipe_name or "cxr.cv" not in run.data.tags:
            continue
        folds = {
            key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, f"fold_{key}"), key=lambda m: m.step)]
            for key in ("auroc_abnormal", "auroc_macro")
        }  # fmt: skip
        row = CVRow(recipe_name, dict(run.data.metrics), dict(run.data.params), folds, run.info.start_time)
        if recipe_name not in latest or latest[recipe_name].started < row.started:
            latest[recipe_name] = row
    return sorted(latest.values(), key=lambda r: -r.metrics.get("cv_auroc_abnormal_mean", 0.0))


NIH = "NIH-ChestXray14"
# The study's results outlive one MLflow instance: each report merges what MLflow holds into this file.
CV_RESULTS = DOCS / "experiments" / "recipes-cv.json"


def load_cv_results(path: Path) -> list[CVRow]:
    if not path.is_file():
        return []
    return [CVRow(**row) for row in json.loads(path.read_text())]


def merge_cv_results(saved: Sequence[CVRow], fresh: Sequence[CVRow], path: Path) -> list[CVRow]:
    """The newest row of each recipe, from the saved file and from MLflow; written back to ``path``."""
    latest: dict[str, CVRow] = {}
    for row in [*saved, *fresh]:
        if row.recipe not in latest or latest[row.recipe].started <= row.started:
            latest[row.recipe] = row
    rows = sorted(latest.values(), key=lambda r: -r.metrics.get("cv_auroc_abnormal_mean", 0.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(r) for r in rows], indent=1, sort_keys=True) + "\n")
    return rows


def _pm(metrics: dict[str, float], key: str) -> str:
    mean, sd = metrics.get(f"cv_{key}_mean"), metrics.get(f"cv_{key}_sd")
    return "-" if mean is None else f"{mean:.3f} ± {_fmt(sd)}"


def _cv_table(rows: list[CVRow]) -> list[str]:
    lines = [
        "| recipe | network, input, epochs | extras | abnormal AUROC | NIH-only abnormal AUROC | macro AUROC "
        "| NIH-only macro AUROC | sensitivity / specificity (threshold from the other folds) "
        "| with TTA: abnormal / NIH-only abnormal AUROC | pooled out-of-fold abnormal AUROC | CV minutes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, m = r.params, r.metrics
        extras = ", ".join(
            f"{k}={p[k]}" for k, default in (("loss", "bce"), ("ema_decay", "None"), ("crop_min_area", "1.0"),
                                             ("equalize_p", "0.0"), ("class_weights", "False"),
                                             ("intensity", "none"))
            if p.get(k, default) != default
        ) or "-"  # fmt: skip
        lines.append(
            f"| {r.recipe} | {p.get('architecture')}, {p.get('input_size')} px, {p.get('epochs')} "
            f"| {extras} | {_pm(m, 'auroc_abnormal')} | {_pm(m, NIH + '/auroc_abnormal')} "
            f"| {_pm(m, 'auroc_macro')} | {_pm(m, NIH + '/auroc_macro')} "
            f"| {_fmt(m.get('cv_sensitivity_mean'), 2)} / {_fmt(m.get('cv_specificity_mean'), 2)} "
            f"| {_pm(m, 'tta_auroc_abnormal')} / {_pm(m, NIH + '/tta_auroc_abnormal')} "
            f"| {_fmt(m.get('pooled_auroc_abnormal'))} | {_fmt(m.get('cv_seconds', math.nan) / 60, 1)} |"
        )
    return lines


def _cv_plot(rows: list[CVRow], path: Path) -> None:
    import matplotlib.pyplot as plt

    from trainer import plots  # noqa: F401  (selects the headless backend)

    fig, ax = plt.subplots(figsize=(10, 3.6))
    names = [r.recipe for r in rows]
    x = np.arange(len(rows))
    for offset, key, label, colour in (
        (-0.18, "auroc_abnormal", "all sources", "#4C72B0"),
        (0.18, NIH + "/auroc_abnormal", "NIH only (no MHH shortcut)", "#DD8452"),
    ):
        means = [r.metrics.get(f"cv_{key}_mean", math.nan) for r in rows]
        sds = [r.metrics.get(f"cv_{key}_sd", math.nan) for r in rows]
        ax.bar(x + offset, means, width=0.34, yerr=sds, capsize=3, label=label, color=colour)
    for i, r in enumerate(rows):
        values = r.folds.get("auroc_abnormal", [])
        ax.scatter([i - 0.18] * len(values), values, s=8, color="black", zorder=3)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(x, names, rotation=15, fontsize=7)
    ax.set_ylim(0.3, 1.0)
    ax.set_ylabel("abnormal AUROC (mean ± sd over folds)", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


SHORTCUT_RESULTS = DOCS / "experiments" / "shortcut-probe.json"


def shortcut_lines(path: Path) -> list[str]:
    """The source shortcut probe's subsection, from its saved result (``python -m trainer.experiments shortcut``)."""
    heading = ["### Source shortcut probe", ""]
    if not path.is_file():
        return [*heading, "Not run yet: `python -m trainer.experiments shortcut`.", ""]
    result = json.loads(path.read_text())
    lines = [
        *heading,
        f"Among abnormal studies only, how well a logistic regression tells `{result['source']}` "
        f"({result['n_source']} studies) from the other sources ({result['n_other']}) by simple features of "
        f"the {result['size']}-pixel image a model receives, as it is and after the `HistogramEqualize` layer "
        "that `--intensity equalize` trains and serves with (`trainer/shortcut.py`; patient-grouped 5-fold "
        "cross-validated AUROC, 0.5 = the source cannot be told). Command: "
        "`python -m trainer.experiments shortcut`.",
        "",
        "| features | " + " | ".join(result["auroc"]) + " |",
        "|---|" + "---|" * len(result["auroc"]),
    ]
    kinds = next(iter(result["auroc"].values()))
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(f"{v[kind]:.3f}" for v in result["auroc"].values()) + " |")
    return [*lines, ""]


def cv_section(rows: list[CVRow], figures: Path, shortcut: Path = SHORTCUT_RESULTS) -> list[str]:
    from trainer.recipes import CHOSEN, SHORTCUT_FINDING, WHY_CHOSEN

    lines = [
        "## Recipe study (patient-level 5-fold cross-validation)",
        "",
        f"Generated from the MLflow experiment `{RECIPE_EXPERIMENT}` merged with the rows kept in "
        "`docs/experiments/recipes-cv.json` (rows from an earlier MLflow instance have no per-fold dots in "
        "the plot); rerun one recipe with "
        "`cxr-triage train --data ../shared/datasets/cxr-public --recipe NAME --cv 5`, or the whole study with "
        "`python -m trainer.experiments cv --recipe NAME ...` then `python -m trainer.experiments report`. "
        "Every recipe trains from random initialisation, in-process on the 2 cores, on 4/5 of the 460 train + "
        "validation studies (the 74 test-split studies are left out: they are the gate's), and is scored on "
        "the fifth with its final weights. Folds are grouped by patient and stratified on source x abnormal. "
        "The MHH source is all abnormal, so its images can be told apart by their look alone: the NIH-only "
        "columns are the honest measure of how well abnormal studies are ranked above normal ones.",
        "",
    ]
    if not rows:
        return [*lines, "Not run yet in this MLflow instance.", ""]
    lines += [*_cv_table(rows), ""]
    _cv_plot(rows, figures / "recipes-cv.png")
    lines += ["![recipes](experiments/recipes-cv.png)", ""]
    lines += [
        f"Chosen: `--recipe best` = `{CHOSEN['best']}`, `--recipe demo` = `{CHOSEN['demo']}`. {WHY_CHOSEN}",
        "",
        *shortcut_lines(shortcut),
        SHORTCUT_FINDING,
        "",
    ]
    return lines


def write_cv_section(rows: list[CVRow], out: Path, *, shortcut: Path = SHORTCUT_RESULTS) -> Path:
    """Put the recipe study's section first in ``out``, replacing the one there (the rest is kept)."""
    text = out.read_text() if out.is_file() else "# Experiments\n"
    heading = "## Recipe study"
    if heading in text:
        start = text.index(heading)
        after = text.find("\n## ", start + len(heading))
        text = text[:start] + (text[after + 1 :] if after >= 0 else "")
    first = text.find("\n## ")
    head, tail = (text[: first + 1], text[first + 1 :]) if first >= 0 else (text.rstrip("\n") + "\n\n", "")
    section = "\n".join(cv_section(rows, out.parent / "experiments", shortcut))
    out.write_text(head + section + "\n" + tail)
    return out


@main.command("shortcut")
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False), default=DEFAULT_DATA)
@click.option("--size", type=click.IntRange(min=32), default=128, show_default=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=DOCS / "experiments.md")
@click.option(
    "--results", type=click.Path(path_type=Path, dir_okay=False), default=SHORTCUT_RESULTS, show_default=True
)
def shortcut_command(data: Path, size: int, out: Path, results: Path) -> None:
    """The source shortcut probe: how well simple image features tell the all-abnormal source apart."""
    from trainer.data.manifest import Verify, build_manifest
    from trainer.data.open import open_sources
    from trainer.shortcut import probe

    result = probe(build_manifest(open_sources([data]), verify=Verify.DECODE), size=size)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({**asdict(result), "size": size}, indent=1) + "\n")
    for view, scores in result.auroc.items():
        click.echo(f"{view}: " + ", ".join(f"{kind} {value:.3f}" for kind, value in scores.items()))
    write_cv_section(load_cv_results(CV_RESULTS), out, shortcut=results)


@main.command("report")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=DOCS / "experiments.md")
@click.option(
    "--recipes-only", is_flag=True, help="Rewrite only the recipe study's section (from cxr-recipes)."
)
@click.option(
    "--cv-results",
    type=click.Path(path_type=Path, dir_okay=False),
    default=CV_RESULTS,
    show_default=True,
    help="The recipe study's saved results, merged with MLflow's and written back.",
)
def report_command(out: Path, recipes_only: bool, cv_results: Path) -> None:
    settings = load_trainer_settings()
    if not recipes_only:
        write_report(collect(settings), out)
    rows = merge_cv_results(load_cv_results(cv_results), collect_cv(settings), cv_results)
    write_cv_section(rows, out)
    click.echo(f"wrote {out} and {cv_results}")


if __name__ == "__main__":
    main()
