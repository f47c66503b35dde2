"""``cxr-triage simulate report``: triage against FIFO on the served model's real scores, same arrivals.

Each run is one shift: Poisson arrivals at the rate that keeps K radiologists ``utilisation`` busy, each an
image of DIR drawn with the chosen prevalence of abnormal ones, reading times from one distribution. Both
orders read the same shift; many seeded runs give means and 95% confidence intervals (normal approximation
over runs). The priority and tier of an image are the served model's (``cxr_triage.priority`` with the
worker's weights, the tiers of the model's own contract), so the report is about the model Triton serves now.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from bench.simulate.queueing import (
    Arrivals,
    Fifo,
    Pool,
    Triage,
    poisson_shift,
    reading_times,
    shift_at,
    waits,
)
from cxr_triage.sla import SlaPolicy, Tier


@dataclass(frozen=True)
class Scenario:
    radiologists: int
    utilisation: float
    prevalence: float
    reading: str
    mean_reading_min: float
    sd_reading_min: float | None
    studies_per_run: int
    runs: int
    seed: int
    replay_min: np.ndarray | None = None  # replayed arrival times (minutes); None: Poisson

    @property
    def rate_per_min(self) -> float:
        if self.replay_min is not None:
            return (len(self.replay_min) - 1) / float(self.replay_min[-1])
        return self.utilisation * self.radiologists / self.mean_reading_min


@dataclass(frozen=True)
class RunWaits:
    """One shift read both ways: waits in minutes, in arrival order, and which studies were abnormal."""

    abnormal: np.ndarray
    fifo: np.ndarray
    triage: np.ndarray


def run_shifts(
    pool: Pool, scenario: Scenario, sla: SlaPolicy, *, progress: Callable[[], None] | None = None
) -> list[RunWaits]:
    rng = np.random.default_rng(scenario.seed)
    found = []
    for _ in range(scenario.runs):
        n = scenario.studies_per_run if scenario.replay_min is None else len(scenario.replay_min)
        reading = reading_times(
            rng,
            n,
            kind=scenario.reading,
            mean_min=scenario.mean_reading_min,
            sd_min=scenario.sd_reading_min,
        )
        shift: Arrivals = (
            poisson_shift(
                rng,
                pool,
                n=n,
                rate_per_min=scenario.rate_per_min,
                prevalence=scenario.prevalence,
                reading=reading,
            )
            if scenario.replay_min is None
            else shift_at(
                rng, pool, at_min=scenario.replay_min, prevalence=scenario.prevalence, reading=reading
            )
        )
        found.append(
            RunWaits(
                abnormal=shift.abnormal,
                fifo=waits(shift, Fifo(shift), scenario.radiologists),
                triage=waits(shift, Triage(shift, sla), scenario.radiologists),
            )
        )
        if progress is not None:
            progress()
    return found


def _mean_ci(values: Sequence[float]) -> dict[str, float]:
    x = np.asarray(values, dtype=float)
    half = NormalDist().inv_cdf(0.975) * x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
    return {"mean": float(x.mean()), "ci95_low": float(x.mean() - half), "ci95_high": float(x.mean() + half)}


def summarise(runs: Sequence[RunWaits]) -> dict[str, Any]:
    """The contract's fields (means over runs of each run's statistic) with their 95% intervals."""
    stats: dict[str, dict[str, float]] = {}
    for policy in ("fifo", "triage"):
        per_run: dict[str, list[float]] = {"abnormal": [], "normal": [], "p95_abnormal": [], "max": []}
        for run in runs:
            w = getattr(run, policy)
            per_run["abnormal"].append(float(w[run.abnormal].mean()))
            per_run["normal"].append(float(w[~run.abnormal].mean()))
            per_run["p95_abnormal"].append(float(np.percentile(w[run.abnormal], 95)))
            per_run["max"].append(float(w.max()))
        for name, values in per_run.items():
            stats[f"{policy}_{name}"] = _mean_ci(values)
    reductions = [
        1 - float(r.triage[r.abnormal].mean()) / float(r.fifo[r.abnormal].mean())
        for r in runs
        if float(r.fifo[r.abnormal].mean()) > 0
    ]
    return {
        "fifo_mean_wait_abnormal_min": stats["fifo_abnormal"]["mean"],
        "triage_mean_wait_abnormal_min": stats["triage_abnormal"]["mean"],
        "reduction_abnormal": float(np.mean(reductions)) if reductions else None,
        "fifo_mean_wait_normal_min": stats["fifo_normal"]["mean"],
        "triage_mean_wait_normal_min": stats["triage_normal"]["mean"],
        "fifo_max_wait_min": stats["fifo_max"]["mean"],
        "triage_max_wait_min": stats["triage_max"]["mean"],
        "fifo_p95_wait_abnormal_min": stats["fifo_p95_abnormal"]["mean"],
        "triage_p95_wait_abnormal_min": stats["triage_p95_abnormal"]["mean"],
        "max_wait_increase": stats["triage_max"]["mean"] / stats["fifo_max"]["mean"] - 1
        if stats["fifo_max"]["mean"] > 0
        else None,
        "ci95": {**stats, "reduction_abnormal": _mean_ci(reductions) if reductions else None},
    }


def binormal_pool(
    rng: np.random.Generator,
    target_auroc: float,
    *,
    n: int,
    prevalence: float,
    tier_for: Callable[[float], Tier],
) -> Pool:
    """Scores of a known AUROC: latent N(d, 1) for abnormal, N(0, 1) for normal, AUROC = Phi(d / sqrt 2),
    mapped into [0, 1] by the normal CDF around the midpoint (so that the tiers' thresholds cut both classes)."""
    d = math.sqrt(2) * NormalDist().inv_cdf(target_auroc)
    abnormal = rng.random(n) < prevalence
    latent = rng.normal(0.0, 1.0, n) + np.where(abnormal, d, 0.0)
    cdf = NormalDist().cdf
    priority = np.array([cdf(x - d / 2) for x in latent])
    return Pool(priority=priority, abnormal=abnormal, tier=tuple(tier_for(float(p)) for p in priority))


def reduction_by_auroc(
    scenario: Scenario,
    sla: SlaPolicy,
    tier_for: Callable[[float], Tier],
    *,
    aurocs: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99),
    progress: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """The reduction of the abnormal mean wait (and the price in maximum wait) a model of each AUROC buys in
    this scenario: where the served model falls short of a target, how far."""
    rng = np.random.default_rng(scenario.seed + 1)
    curve = []
    for target in aurocs:
        pool = binormal_pool(rng, target, n=4000, prevalence=0.5, tier_for=tier_for)
        result = summarise(run_shifts(pool, scenario, sla))
        curve.append(
            {
                "auroc": target,
                "measured_auroc": auroc(pool),
                "reduction_abnormal": result["reduction_abnormal"],
                "max_wait_increase": result["max_wait_increase"],
            }
        )
        if progress is not None:
            progress()
    return curve


def verdict(
    result: dict[str, Any], *, reduction_min: float = 0.5, max_increase: float = 0.25
) -> dict[str, Any]:
    """Whether this scenario meets the target: abnormal mean wait down by ``reduction_min``, the maximum wait
    up by at most ``max_increase``; when not, the smallest AUROC on the curve that would."""
    met = (result["reduction_abnormal"] or 0) >= reduction_min and (
        result["max_wait_increase"] or 0
    ) <= max_increase
    enough = [
        point["auroc"]
        for point in result.get("reduction_by_auroc", [])
        if (point["reduction_abnormal"] or 0) >= reduction_min
        and (point["max_wait_increase"] or 0) <= max_increase
    ]
    return {
        "reduction_min": reduction_min,
        "max_wait_increase_max": max_increase,
        "met": met,
        "auroc_needed": min(enough) if enough else None,
    }


def auroc(pool: Pool) -> float | None:
    if pool.abnormal.all() or not pool.abnormal.any():
        return None
    return float(roc_auc_score(pool.abnormal, pool.priority))


def _aging(sla: dict[str, Any] | None) -> str:
    if not sla:
        return "aging as configured"
    allowances = (
        f"tier allowances {sla['critical_max_wait_min']:g} / {sla['urgent_max_wait_min']:g} / "
        f"{sla['routine_max_wait_min']:g} min"
    )
    horizon = sla.get("aging_horizon_min")
    return f"{allowances}, aging horizon {'none' if horizon is None else f'{horizon:g} min'}"


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    ci = result["ci95"]
    rows = [
        ("mean wait, abnormal (min)", "abnormal"),
        ("mean wait, normal (min)", "normal"),
        ("p95 wait, abnormal (min)", "p95_abnormal"),
        ("max wait per shift (min)", "max"),
    ]
    scenario = result["scenario"]
    lines = [
        f"Model version {result['model_version']} (AUROC abnormal on the data: {result['auroc']:.3f}); "
        f"{scenario['radiologists']} radiologists at {scenario['utilisation']:.0%} utilisation, prevalence "
        f"{scenario['prevalence']:.2f}, {scenario['reading']} reading times (mean "
        f"{scenario['mean_reading_min']} min), {scenario['runs']} runs of {scenario['studies_per_run']} "
        f"studies; {_aging(scenario.get('sla'))}; mean over runs [95% CI].",
        "",
        "| | FIFO | triage |",
        "|---|---|---|",
    ]
    for label, key in rows:
        f, t = ci[f"fifo_{key}"], ci[f"triage_{key}"]
        lines.append(
            f"| {label} | {f['mean']:.1f} [{f['ci95_low']:.1f}, {f['ci95_high']:.1f}] "
            f"| {t['mean']:.1f} [{t['ci95_low']:.1f}, {t['ci95_high']:.1f}] |"
        )
    reduction = result["reduction_abnormal"]
    lines += [
        "",
        f"Abnormal mean wait reduced by {reduction:.1%}; maximum wait "
        f"{result['max_wait_increase']:+.1%} against FIFO.",
    ]
    target = result.get("target")
    if target is not None:
        lines += [
            "",
            f"Target (abnormal mean wait -{target['reduction_min']:.0%}, maximum wait at most "
            f"+{target['max_wait_increase_max']:.0%}): {'met' if target['met'] else 'not met'}"
            + (
                ""
                if target["met"]
                else f"; on simulated scores a model of AUROC {target['auroc_needed']} would meet it"
                if target["auroc_needed"] is not None
                else "; no AUROC on the curve meets it in this scenario"
            )
            + ".",
            "",
            "| model AUROC | abnormal mean wait reduced | maximum wait vs FIFO |",
            "|---|---|---|",
            *(
                f"| {p['auroc']:.2f} | {(p['reduction_abnormal'] or 0):.1%} | {(p['max_wait_increase'] or 0):+.1%} |"
                for p in result.get("reduction_by_auroc", [])
            ),
        ]
    path.write_text("\n".join(lines) + "\n")


def write_plot(path: Path, runs: Sequence[RunWaits]) -> None:
    """Wait-time distributions (all runs pooled) by class and policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (label, abnormal) in zip(axes, (("abnormal", True), ("normal", False)), strict=True):
        for policy, colour in (("fifo", "tab:grey"), ("triage", "tab:red")):
            pooled = np.concatenate([getattr(r, policy)[r.abnormal == abnormal] for r in runs])
            ax.hist(pooled, bins=60, histtype="step", density=True, color=colour, label=policy)
        ax.set_title(f"{label} studies")
        ax.set_xlabel("wait before being read (min)")
        ax.set_yscale("log")
        ax.legend()
    axes[0].set_ylabel("density")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_curve_plot(path: Path, result: dict[str, Any]) -> None:
    """Reduction of the abnormal mean wait against model AUROC, the served model marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result["reduction_by_auroc"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["auroc"] for p in curve], [100 * (p["reduction_abnormal"] or 0) for p in curve], "o-",
            label="simulated scores of known AUROC")  # fmt: skip
    if result["auroc"] is not None:
        ax.plot([result["auroc"]], [100 * (result["reduction_abnormal"] or 0)], "r*", markersize=14,
                label=f"served model v{result['model_version']}")  # fmt: skip
    ax.axhline(100 * result["target"]["reduction_min"], color="grey", linestyle="--", label="target")
    ax.set_xlabel("model AUROC (abnormal vs normal)")
    ax.set_ylabel("abnormal mean wait reduced (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def as_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2)
