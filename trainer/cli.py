"""Commands of the trainer: ``cxr-triage train | evaluate | promote | rollback``.

Heavy imports (torch, Ray, MLflow) happen inside each command, so listing commands stays fast. Trainer errors
are shown as one message (exit 1); anything else keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from trainer.settings import load_trainer_settings

SPLITS = ("all", "train", "val", "test")


@contextmanager
def _errors_as_messages() -> Iterator[None]:
    from trainer.errors import TrainerError

    try:
        yield
    except TrainerError as exc:
        raise click.ClickException(str(exc)) from exc


def _quiet_frameworks() -> None:
    """Ray Train logs every epoch's metrics at INFO and MLflow prints each run's URL: the progress bars, the
    command's output (which names the run) and MLflow itself already show them."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import ray.train  # noqa: F401  (Ray sets its loggers' levels on import: set ours after it)

    for name in [n for n in logging.root.manager.loggerDict if n == "ray" or n.startswith("ray.")]:
        logging.getLogger(name).setLevel(logging.WARNING)


def _emit(payload: dict[str, Any], as_json: bool, text: Callable[[dict[str, Any]], str]) -> None:
    click.echo(json.dumps(payload, indent=2, default=str) if as_json else text(payload))


@click.command()
@click.option(
    "--data",
    "data",
    type=click.Path(path_type=Path, exists=True, file_okay=False, resolve_path=True),
    multiple=True,
    required=True,
    help="CheXpert-layout or NIH ChestX-ray14 folder (repeat to combine sources).",
)
@click.option(
    "--model",
    "architecture",
    type=click.Choice(
        ["densenet121", "resnet18", "resnet34", "efficientnet-b0", "vit-tiny", "vit-base", "vit-large"]
    ),
    default="densenet121",
    show_default=True,
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Local pretrained weights (ImageNet or CheXpert); default: random initialisation.",
)
@click.option("--finetune", type=click.Choice(["full", "last-k", "lora"]), default="full", show_default=True)
@click.option(
    "--last-k", type=int, default=2, show_default=True, help="Blocks trained with --finetune last-k."
)
@click.option("--lora-rank", type=int, default=8, show_default=True)
@click.option(
    "--input-size",
    type=click.IntRange(32, 1024),
    default=224,
    show_default=True,
    help="Image side in pixels; stored in the model, which Triton then serves at that size.",
)
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True, help="Per worker.")
@click.option("--grad-accum", type=int, default=1, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Micro-batches per epoch at most (bounded runs).")
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--weight-decay", type=float, default=1e-5, show_default=True)
@click.option("--loss", type=click.Choice(["bce", "focal", "asymmetric"]), default="bce", show_default=True)
@click.option("--warmup-epochs", type=float, default=0.0, show_default=True, help="Linear LR warm-up.")
@click.option("--ema", "ema_decay", type=float, default=None, help="Keep an EMA of the weights (e.g. 0.99).")
@click.option("--crop-min-area", type=float, default=1.0, show_default=True, help="Random crops (1 = none).")
@click.option(
    "--equalize-p", type=float, default=0.0, show_default=True, help="Chance of histogram equalisation."
)
@click.option(
    "--intensity",
    type=click.Choice(["none", "equalize"]),  # trainer.models.Intensity; torch is imported lazily
    default="none",
    show_default=True,
    help="'equalize': histogram-equalise every image inside the network, in training and in the export.",
)
@click.option(
    "--policy", type=click.Choice(["u-ignore", "u-ones", "u-zeros"]), default="u-ignore", show_default=True
)
@click.option("--class-weights", is_flag=True, help="Weight positives by negatives/positives per label.")
@click.option("--no-augment", is_flag=True)
@click.option("--workers", type=int, default=2, show_default=True, help="Ray Train workers (0 = in-process).")
@click.option("--cpus-per-worker", type=int, default=1, show_default=True)
@click.option("--gpu", is_flag=True, help="One GPU per worker (NCCL).")
@click.option(
    "--loader-workers",
    type=int,
    default=0,
    show_default=True,
    help="DataLoader processes per Ray worker (decoding in parallel with the GPU).",
)
@click.option("--strategy", type=click.Choice(["ddp", "fsdp"]), default="ddp", show_default=True)
@click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]), default="off", show_default=True)
@click.option("--seed", type=int, default=20240601, show_default=True)
@click.option(
    "--max-minutes",
    type=float,
    default=None,
    help="Time budget of the training loop: no epoch starts that would overrun it.",
)
@click.option("--experiment", default=None, help="MLflow experiment (default: CXR_MLFLOW_EXPERIMENT).")
@click.option("--run-name", default=None)
@click.option(
    "--resume-from",
    type=click.Path(path_type=Path, exists=True, file_okay=False, resolve_path=True),
    default=None,
    help="A checkpoint folder of an earlier run: continue from its epoch.",
)
@click.option("--int8", is_flag=True, help="Also quantise to INT8 and record its AUROC change.")
@click.option("--no-register", is_flag=True, help="Do not register the model (no challenger alias).")
@click.option(
    "--verify",
    type=click.Choice(["decode", "exists", "none"]),
    default="decode",
    show_default=True,
    help="Check images before training: decode all, only existence, or not at all.",
)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bars (default: when stderr is a terminal)."
)
@click.option(
    "--if-no-champion", is_flag=True, help="Do nothing when a champion exists (first-run bootstrap)."
)
@click.option(
    "--promote", "then_promote", is_flag=True, help="Promote the new challenger right away (gated)."
)
@click.option(
    "--recipe",
    default=None,
    help="Start from a named recipe (best, demo, or one of trainer/recipes.py); options given here win.",
)
@click.option(
    "--cv",
    type=click.IntRange(min=2),
    default=None,
    help="Patient-level K-fold cross-validation instead of one training: mean and sd over the folds.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def train(**options: Any) -> None:  # fmt: skip
    """Train a classifier with Ray Train, track it in MLflow and register it as the challenger."""
    from trainer.data.manifest import Verify

    settings = load_trainer_settings()
    _quiet_frameworks()
    with _errors_as_messages():
        cfg = _train_config(options, click.get_current_context())
        if options["cv"] is not None:
            _cross_validate(cfg, options, settings)
            return
        if options["if_no_champion"] and _champion(settings) is not None:
            _emit(
                {"trained": False, "reason": "a champion exists"},
                options["as_json"],
                lambda p: "a champion exists: nothing to do",
            )
            return
        from trainer.train import run_training

        outcome = run_training(
            cfg=cfg,
            data=list(options["data"]),
            settings=settings,
            experiment=options["experiment"],
            run_name=options["run_name"],
            resume_from=options["resume_from"],
            register=not options["no_register"],
            int8=options["int8"],
            verify=Verify(options["verify"]),
        )
        from trainer.evaluate import summary

        payload: dict[str, Any] = {
            "trained": True,
            "run_id": outcome.run_id,
            "model_version": outcome.model_version,
            "checkpoint": str(outcome.checkpoint),
            "validation": summary(outcome.validation),
            "onnx_parity_max_abs_diff": outcome.parity_max_abs_diff,
            "train_seconds": round(outcome.train_seconds, 1),
            "total_seconds": round(outcome.total_seconds, 1),
        }
        if options["then_promote"] and outcome.model_version is not None:
            payload["promotion"] = _promote(settings, data=None, split=None).to_dict()
    _emit(payload, options["as_json"], _train_text)


# TrainConfig fields whose option has another name (the rest share it).
_OPTION_OF_FIELD = {"max_steps_per_epoch": "max_steps", "num_workers": "workers", "use_gpu": "gpu"}
_CONFIG_FIELDS = (
    "architecture", "finetune", "last_k", "lora_rank", "input_size", "epochs", "batch_size", "grad_accum",
    "max_steps_per_epoch", "lr", "weight_decay", "policy", "class_weights", "loss", "warmup_epochs",
    "ema_decay", "crop_min_area", "equalize_p", "intensity", "num_workers", "cpus_per_worker", "loader_workers",
    "use_gpu", "strategy", "amp", "seed", "max_minutes",
)  # fmt: skip


def _train_config(options: dict[str, Any], ctx: click.Context) -> Any:
    """The TrainConfig: the recipe's values (if one is named), then every option given on the command line."""
    from click.core import ParameterSource

    from trainer.config import TrainConfig
    from trainer.recipes import recipe

    values = recipe(options["recipe"]) if options["recipe"] else {}
    for name in _CONFIG_FIELDS:
        option = _OPTION_OF_FIELD.get(name, name)
        if name not in values or ctx.get_parameter_source(option) is ParameterSource.COMMANDLINE:
            values[name] = options[option]
    values["augment"] = not options["no_augment"]
    values["weights"] = str(options["weights"]) if options["weights"] else None
    values["progress"] = sys.stderr.isatty() if options["progress"] is None else options["progress"]
    return TrainConfig.model_validate(values)


def _cross_validate(cfg: Any, options: dict[str, Any], settings: Any) -> None:
    from trainer.cv import run_cv
    from trainer.data.manifest import Verify

    flags = {"resume_from": "--resume-from", "int8": "--int8", "then_promote": "--promote",
             "if_no_champion": "--if-no-champion"}  # fmt: skip
    refused = [flag for name, flag in flags.items() if options[name]]
    if refused:
        raise click.UsageError(f"--cv trains no model to keep: {', '.join(refused)} cannot go with it")
    result = run_cv(
        cfg=cfg, k=options["cv"], data=list(options["data"]), settings=settings,
        experiment=options["experiment"], run_name=options["run_name"], verify=Verify(options["verify"]),
        tags={"cxr.recipe": options["recipe"]} if options["recipe"] else None,
    )  # fmt: skip
    payload = {"recipe": options["recipe"], **result.to_dict()}
    _emit(payload, options["as_json"], _cv_text)


def _cv_text(p: dict[str, Any]) -> str:
    lines = [f"{p['cv']}-fold cross-validation (MLflow run {p['run_id']}), recipe {p['recipe'] or '-'}:"]
    for key, stats in p["summary"].items():
        sd = "-" if stats["sd"] is None else f"{stats['sd']:.3f}"
        lines.append(f"  {key}: {stats['mean']:.3f} ± {sd} ({int(stats['folds'])} folds)")
    return "\n".join(lines)


def _train_text(p: dict[str, Any]) -> str:
    v = p["validation"]
    lines = [
        f"run {p['run_id']}: model version {p['model_version']} (challenger), {p['total_seconds']} s",
        f"validation: n={v['n']} macro AUROC {v['auroc_macro']} abnormal AUROC {v['auroc_abnormal']} "
        f"sensitivity {v['sensitivity']} specificity {v['specificity']} at threshold {v['threshold']}",
    ]
    if "promotion" in p:
        lines.append(_promote_text(p["promotion"]))
    return "\n".join(lines)


def _champion(settings: Any) -> Any:
    from trainer import tracking

    client = tracking.client_for(settings.mlflow_tracking_uri)
    return tracking.version_by_alias(client, settings.registered_model, tracking.CHAMPION)


@click.command()
@click.option(
    "--data", type=click.Path(path_type=Path, exists=True, file_okay=False, resolve_path=True), required=True
)
@click.option(
    "--model",
    "model_uri",
    default=None,
    help="models:/NAME@ALIAS, models:/NAME/VERSION, an MLflow artifact URI or a .onnx file "
    "(default: the champion).",
)
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default="all",
    show_default=True,
    help="Patient-level split of the folder to score (val = the training runs' validation split).",
)
@click.option(
    "--predictions-out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write one CSV row per image: Path, the 14 probabilities and the worklist priority.",
)
@click.option("--json", "as_json", is_flag=True)
def evaluate(data: Path, model_uri: str | None, split: str, predictions_out: Path | None, as_json: bool) -> None:  # fmt: skip
    """Score a CheXpert-layout folder: AUROCs, and sensitivity/specificity at the model's threshold."""
    from trainer.data.splits import Split
    from trainer.evaluate import evaluate as run_evaluate

    settings = load_trainer_settings()
    with _errors_as_messages(), tempfile.TemporaryDirectory(prefix="cxr-evaluate-") as tmp:
        result = run_evaluate(
            data=data, model_uri=model_uri, settings=settings, split=Split(split), workdir=Path(tmp),
            predictions_out=predictions_out,
        )  # fmt: skip
    _emit(result, as_json, _evaluate_text)


def _evaluate_text(r: dict[str, Any]) -> str:
    lines = [
        f"model {r['model_uri']} (version {r['model_version']}) on {r['data']} [{r['split']}], n={r['n']}",
        f"  macro AUROC {r['auroc_macro']}  abnormal AUROC {r['auroc_abnormal']}",
        f"  at threshold {r['threshold']} ({r['threshold_source']}): sensitivity {r['sensitivity']} "
        f"specificity {r['specificity']}",
    ]
    for source, s in r["per_source"].items():
        lines.append(f"  {source}: n={s['n']} macro AUROC {s['auroc_macro']} sensitivity {s['sensitivity']}")
    lines.append("  slices (95% bootstrap intervals by patient):")
    for name, s in r["slices"].items():
        figures = "  ".join(
            f"{m} {_interval(s[m])}" for m in ("auroc_abnormal", "sensitivity", "specificity")
        )
        lines.append(f"    {name}: n={s['n']} ({s['n_abnormal']} abnormal)  {figures}")
    return "\n".join(lines)


def _interval(e: dict[str, Any]) -> str:
    if e["value"] is None:
        return "-"
    if e["ci_low"] is None:
        return f"{e['value']:.2f}"
    return f"{e['value']:.2f} [{e['ci_low']:.2f}, {e['ci_high']:.2f}]"


def _promote(settings: Any, *, data: Path | None, split: str | None) -> Any:
    from trainer import tracking
    from trainer.data.splits import Split
    from trainer.promote import load_eval_split, promote
    from trainer.serving import TritonRepository

    evaluation = load_eval_split(settings, data=data, split=Split(split) if split else None)
    return promote(
        client=tracking.client_for(settings.mlflow_tracking_uri),
        settings=settings,
        serving=TritonRepository(settings),
        evaluation=evaluation,
    )


def _promote_text(p: dict[str, Any]) -> str:
    if p["promoted"]:
        return f"version {p['challenger_version']} is champion; Triton serves it as version {p['served_version']}"
    return f"version {p['challenger_version']} NOT promoted: " + "; ".join(p["gate"]["reasons"])


@click.command()
@click.option(
    "--data",
    type=click.Path(path_type=Path, exists=True, file_okay=False, resolve_path=True),
    default=None,
    help="Evaluation folder (default: CXR_EVAL_DATA, the public set).",
)
@click.option("--split", type=click.Choice(SPLITS), default=None, help="Default: CXR_EVAL_SPLIT (val).")
@click.option("--json", "as_json", is_flag=True)
def promote(data: Path | None, split: str | None, as_json: bool) -> None:  # fmt: skip
    """Gate the challenger against the champion; if it passes, serve it in Triton and make it champion."""
    settings = load_trainer_settings()
    with _errors_as_messages():
        result = _promote(settings, data=data, split=split).to_dict()
    _emit(result, as_json, _promote_text)
    if not result["promoted"]:
        sys.exit(2)  # distinct from errors (1): the gate said no


@click.command()
@click.option("--json", "as_json", is_flag=True)
def rollback(as_json: bool) -> None:
    """Serve the previous champion again and make it champion."""
    from trainer import tracking
    from trainer.promote import rollback as run_rollback
    from trainer.serving import TritonRepository

    settings = load_trainer_settings()
    with _errors_as_messages():
        result = run_rollback(
            client=tracking.client_for(settings.mlflow_tracking_uri),
            settings=settings,
            serving=TritonRepository(settings),
        ).to_dict()
    _emit(result, as_json, _rollback_text)


def _rollback_text(r: dict[str, Any]) -> str:
    now = f"version {r['champion_version']} is champion again" if r["champion_version"] else "no champion"
    return f"{now}; Triton serves version {r['served_version']}; version {r['replaced_version']} retired"
