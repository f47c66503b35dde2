"""What every Ray Train worker runs: build, (resume,) train, validate, checkpoint, report. No driver logic here.

Rank 0 validates on the whole validation split with the unwrapped module (no collective calls, so the other
ranks need not follow), logs the epoch to MLflow and writes the checkpoint; every rank reports.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from trainer import checkpoints, metrics
from trainer.checkpoints import TrainState
from trainer.config import TrainConfig
from trainer.data.augment import AugmentConfig
from trainer.data.dataset import CXRDataset
from trainer.data.manifest import Manifest
from trainer.losses import loss_function, positive_weights
from trainer.models import build_model, count_parameters
from trainer.predict import predict

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _progress(total: int, desc: str, *, enabled: bool, position: int) -> Any:
    """A progress bar in Ray Train's local mode (in this process); with Ray workers the driver draws one."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, position=position, file=sys.stderr, leave=position == 0)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)
    assert isinstance(inner, nn.Module)
    return inner


def _model_state(model: nn.Module, strategy: str) -> dict[str, torch.Tensor]:
    if strategy == "fsdp" and dist.is_initialized():
        # A collective: every rank must call it; it gathers the full weights onto each rank's CPU.
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v for k, v in full.items() if isinstance(v, torch.Tensor)}
    return {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}


def _ema_state(ema: torch.optim.swa_utils.AveragedModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in ema.module.state_dict().items()}


def _copy_buffers(source: nn.Module, target: nn.Module) -> None:
    with torch.no_grad():
        for mine, theirs in zip(target.buffers(), source.buffers(), strict=True):
            mine.copy_(theirs)


def _schedule(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int) -> Any:
    """Cosine decay to 0 over the run, after ``warmup_steps`` of linear warm-up from 1% of the rate."""
    cosine_steps = max(1, total_steps - warmup_steps)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cosine_steps)
    if warmup_steps <= 0:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


def _reduce(values: list[float], device: torch.device, op: Any = None) -> list[float]:
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return [float(v) for v in tensor.tolist()]


def _resume_state(config: dict[str, Any]) -> tuple[Path | None, Any]:
    """The checkpoint to resume from: Ray's (a restored run) or the one named with --resume-from."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        return None, checkpoint.as_directory()
    explicit = config.get("resume_from")
    return (Path(explicit), contextlib.nullcontext(explicit)) if explicit else (None, None)


class _MlflowEpochLogger:
    """Rank 0 logs each epoch into the run the driver opened (no run: nothing is logged)."""

    def __init__(self, tracking: dict[str, str] | None) -> None:
        self.client = None
        self.run_id = (tracking or {}).get("run_id")
        if self.run_id:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=(tracking or {})["tracking_uri"])

    def log(self, values: dict[str, float], step: int) -> None:
        if self.client is None or self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in values.items() if math.isfinite(v)]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_params(self, values: dict[str, Any]) -> None:
        if self.client is not None and self.run_id is not None:
            from mlflow.entities import Param

            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in values.items()])


def train_loop_per_worker(config: dict[str, Any]) -> list[dict[str, float]]:
    """Ray Train entry point. ``config``: ``train`` (TrainConfig dump), ``train_data`` / ``val_data``
    (Manifests), optional ``tracking`` {tracking_uri, run_id} and ``resume_from`` (checkpoint folder)."""
    cfg = TrainConfig.model_validate(config["train"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(cfg.cpus_per_worker)  # one worker per CPU: more threads only contend
    seed_everything(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)

    spec = cfg.model_spec()
    model = build_model(spec)
    counts = count_parameters(model)
    resumed_from, resume_dir_ctx = _resume_state(config)
    state: TrainState | None = None
    if resume_dir_ctx is not None:
        with resume_dir_ctx as folder:
            model.load_state_dict(torch.load(Path(folder) / checkpoints.MODEL_FILE, weights_only=True))
            state = checkpoints.load_state(Path(folder))
    kwargs = {"use_orig_params": True} if cfg.strategy == "fsdp" else None  # frozen params need orig params
    model = ray.train.torch.prepare_model(
        model, parallel_strategy=cfg.strategy, parallel_strategy_kwargs=kwargs
    )

    train_manifest: Manifest = config["train_data"]
    val_manifest: Manifest = config["val_data"]
    augment = (
        AugmentConfig(crop_min_area=cfg.crop_min_area, equalize_p=cfg.equalize_p) if cfg.augment else None
    )
    train_set = CXRDataset(
        train_manifest, size=cfg.input_size, policy=cfg.policy, augment=augment, seed=cfg.seed
    )
    val_set = CXRDataset(val_manifest, size=cfg.input_size, policy=cfg.policy)
    sampler: DistributedSampler[Any] = DistributedSampler(
        train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed
    )
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.loader_workers)
    steps_per_epoch = min(len(loader), cfg.max_steps_per_epoch or len(loader))
    optimizer_steps = math.ceil(steps_per_epoch / cfg.grad_accum) * cfg.epochs

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    scheduler = _schedule(optimizer, total_steps=optimizer_steps, warmup_steps=round(
        cfg.warmup_epochs * math.ceil(steps_per_epoch / cfg.grad_accum)
    ))  # fmt: skip
    # The EMA follows the unwrapped module, whose parameters DDP keeps equal on every rank.
    ema = (
        torch.optim.swa_utils.AveragedModel(
            _unwrap(model), multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay)
        )
        if cfg.ema_decay
        else None
    )
    criterion = loss_function(cfg.loss)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    pos_weight = None
    if cfg.class_weights:
        targets, mask = train_manifest.targets(cfg.policy)
        pos_weight = torch.from_numpy(positive_weights(targets, mask)).to(device)

    start_epoch, step, history = 0, 0, []
    if state is not None:
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        checkpoints.restore_rng(state.rng)
        start_epoch, step, history = state.epoch, state.step, list(state.history)
        logger.info("resumed", extra={"epoch": start_epoch, "from": str(resumed_from or "ray checkpoint")})

    tracker = _MlflowEpochLogger(config.get("tracking") if rank == 0 else None)
    # Every run records what it trained (a resumed training is a new MLflow run).
    tracker.log_params(
        {"trainable_params": counts.trainable, "total_params": counts.total,
         "trainable_fraction": round(counts.fraction, 6), "world_size": world}
    )  # fmt: skip
    show = cfg.progress and rank == 0
    epochs_bar = _progress(cfg.epochs, "epochs", enabled=show, position=0)
    if epochs_bar is not None:
        epochs_bar.update(start_epoch)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)

    loop_started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        model.train()
        steps_bar = _progress(steps_per_epoch, f"epoch {epoch + 1}", enabled=show, position=1)
        loss_sum, n_images, started = 0.0, 0, time.perf_counter()
        for index, (images, targets, mask) in enumerate(_take(loader, steps_per_epoch)):
            images, targets, mask = images.to(device), targets.to(device), mask.to(device)
            last_micro = (index + 1) % cfg.grad_accum == 0 or index + 1 == steps_per_epoch
            # Between optimizer steps the gradient all-reduce is skipped: it would be thrown away.
            no_sync = getattr(model, "no_sync", None)
            sync = contextlib.nullcontext() if last_micro or no_sync is None else no_sync()
            with sync, torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = criterion(model(images), targets, mask, pos_weight)
                scaler.scale(loss / cfg.grad_accum).backward()
            if last_micro:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(_unwrap(model))
                step += 1
            loss_sum += float(loss.detach()) * len(images)
            n_images += len(images)
            if steps_bar is not None:
                steps_bar.update(1)
        seconds = time.perf_counter() - started
        if steps_bar is not None:
            steps_bar.close()
        loss_total, images_total = _reduce([loss_sum, float(n_images)], device)
        (peak_mb,) = _reduce(
            [peak_memory_mb(device)], device, dist.ReduceOp.MAX if dist.is_initialized() else None
        )

        epoch_metrics = {
            "epoch": float(epoch + 1),
            "train_loss": loss_total / max(images_total, 1.0),
            "epoch_seconds": seconds,
            "images_per_second": images_total / seconds if seconds > 0 else 0.0,
            "peak_memory_mb": peak_mb,
            "lr": float(scheduler.get_last_lr()[0]),
        }
        if ema is not None:
            # BatchNorm statistics are buffers the EMA does not average: the trained model's are current.
            _copy_buffers(_unwrap(model), ema.module)
        model_state = _model_state(model, cfg.strategy) if ema is None else _ema_state(ema)
        if rank == 0:
            evaluated = _unwrap(model) if ema is None else ema.module
            probabilities, val_loss = predict(
                evaluated, val_set, batch_size=cfg.val_batch_size, device=device
            )
            truth = np.where(val_manifest.raw_labels() == -1.0, np.nan, val_manifest.raw_labels())
            val = metrics.report(probabilities, truth, val_manifest.abnormal())
            epoch_metrics |= {
                "val_loss": val_loss,
                "val_auroc_macro": val.auroc_macro,
                "val_auroc_abnormal": val.auroc_abnormal,
            }
            history.append(epoch_metrics)
            tracker.log(epoch_metrics, step=epoch + 1)
            with _checkpoint_folder(config.get("local_checkpoint_root"), epoch + 1) as folder:
                checkpoints.save(
                    Path(folder),
                    model_state=model_state,
                    state=TrainState(
                        epoch + 1,
                        step,
                        history,
                        optimizer.state_dict(),
                        scheduler.state_dict(),
                        checkpoints.rng_state(),
                    ),
                    spec=spec,
                )
                ray.train.report(epoch_metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(epoch_metrics)
        if epochs_bar is not None:
            epochs_bar.update(1)
        if _out_of_time(cfg.max_minutes, loop_started, seconds, device):
            logger.warning("time budget reached: stopping", extra={"epochs_done": epoch + 1})
            break
    if epochs_bar is not None:
        epochs_bar.close()
    return history


def _out_of_time(
    max_minutes: float | None, started: float, epoch_seconds: float, device: torch.device
) -> bool:
    """Would another epoch overrun the budget? Rank 0's clock decides for all, so every rank stops together."""
    if max_minutes is None:
        return False
    elapsed = time.perf_counter() - started
    stop = float(elapsed + epoch_seconds * 1.2 > max_minutes * 60)
    if dist.is_initialized():
        flag = torch.tensor([stop], dtype=torch.float64, device=device)
        dist.broadcast(flag, src=0)
        stop = float(flag.item())
    return bool(stop)


@contextlib.contextmanager
def _checkpoint_folder(local_root: str | None, epoch: int) -> Iterator[str]:
    """Where rank 0 writes a checkpoint: a temporary folder Ray copies to storage, or (local mode, where Ray
    keeps only a reference) a folder that stays."""
    if local_root:
        kept = Path(local_root) / f"epoch-{epoch:04d}"
        kept.mkdir(parents=True, exist_ok=True)
        yield str(kept)
        # As Ray keeps 2 (CheckpointConfig): a checkpoint is ~3x the weights (optimizer state), every epoch.
        for old in Path(local_root).glob("epoch-*"):
            if old.name < f"epoch-{epoch - 1:04d}":
                shutil.rmtree(old, ignore_errors=True)
        return
    with tempfile.TemporaryDirectory(prefix="cxr-ckpt-") as folder:
        yield folder


def _take(loader: DataLoader[Any], steps: int) -> Iterator[Any]:
    for index, batch in enumerate(loader):
        if index >= steps:
            return
        yield batch
