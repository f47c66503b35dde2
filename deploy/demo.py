"""``cxr-triage demo``: the whole system end to end on this machine, one line or progress bar per stage.

Each stage runs the same commands a user would (``up``, ``train``, ``produce``, dcmtk's ``storescu``) as
processes whose logs go to ``$CXR_HOME/logs/demo-*.log``; this command only watches their progress (stack
health, the MLflow run's epochs, the worklist in Redis) and ends with a summary a new user can act on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from cxr_triage.redis_client import open_redis
from cxr_triage.settings import Settings, load_settings
from cxr_triage.sla import TIERS
from cxr_triage.worklist.keys import WorklistKeys
from deploy.procs import is_alive
from deploy.stack import Stack

STAGES = 6
TRAIN_POLL_S = 2.0


class DemoFailed(click.ClickException):
    """A stage failed: the message names its log."""


@dataclass
class Demo:
    settings: Settings
    env: dict[str, str]
    bars: bool
    stage: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.settings.logs_dir

    def log(self, name: str) -> Path:
        return self.logs / f"demo-{name}.log"

    def say(self, text: str) -> None:
        click.echo(text)

    def begin(self, title: str) -> str:
        self.stage += 1
        return f"[{self.stage}/{STAGES}] {title:<12}"

    def run(
        self, name: str, argv: Sequence[str], *, timeout_s: float, show_stderr: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` with its log (and stdout, unless kept) in demo-NAME.log; its stderr on the terminal only for
        a progress bar (``show_stderr``): the command's log lines go to the file through CXR_LOG_FILE."""
        log = self.log(name)
        env = self.env | {"CXR_LOG_FILE": str(log)}
        with log.open("a", encoding="utf-8") as out:
            out.write(f"\n$ {' '.join(argv)}\n")
            out.flush()
            return subprocess.run(
                list(argv),
                env=env,
                stdout=subprocess.PIPE,
                stderr=None if show_stderr else out,
                text=True,
                timeout=timeout_s,
                check=False,
            )

    def cxr(
        self, name: str, *args: str, timeout_s: float, show_stderr: bool = False
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            name, [sys.executable, "-m", "cxr_triage", *args], timeout_s=timeout_s, show_stderr=show_stderr
        )

    def failed(self, what: str, name: str) -> DemoFailed:
        return DemoFailed(f"{what}: see {self.log(name)} (then `make down`, fix, and `make demo` again)")

    def bar(self, total: int | None, desc: str) -> tqdm[Any]:
        return tqdm(
            total=total, desc=desc, file=sys.stderr, disable=not self.bars, leave=False, dynamic_ncols=True
        )


def _seconds(value: float) -> str:
    return f"{value / 60:.0f} min {value % 60:02.0f} s" if value >= 60 else f"{value:.0f} s"


# -- stages ----------------------------------------------------------------------------------------------


def start_stack(demo: Demo) -> None:
    head = demo.begin("stack")
    stack = Stack.from_settings(demo.settings)
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "cxr_triage", "up", "--detach", "--observability"],
        env=demo.env | {"CXR_LOG_FILE": str(demo.log("up"))},
        stdout=demo.log("up").open("a", encoding="utf-8"),
        stderr=subprocess.STDOUT,
    )
    # Progress counts started processes, from their pid files: probing health here too would open a DICOM
    # connection to the gateway every second, and each holds one of its association slots until it times out.
    with demo.bar(len(stack.components), f"{head} starting") as bar:
        while process.poll() is None:
            records = [stack.pid_file(c.name).read() for c in stack.components]
            bar.n = sum(record is not None and is_alive(record) for record in records)
            bar.refresh()
            time.sleep(1.0)
    if process.returncode != 0:
        raise demo.failed("the stack did not start", "up")
    names = ", ".join(c.name for c in stack.components)
    demo.say(
        f"{head} ✓ {len(stack.components)} components healthy in {_seconds(time.monotonic() - started)}: {names}"
    )


def _latest_run(client: Any, since_ms: int) -> Any:
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiment_ids=experiments,
        filter_string=f"attributes.start_time >= {since_ms}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def _watch_training(demo: Demo, process: subprocess.Popen[str], head: str) -> None:
    """An epoch bar from the MLflow run while ``process`` trains: its ``epochs`` parameter, then one metric an epoch."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=demo.settings.mlflow_tracking_uri)
    since_ms = int(time.time() * 1000) - 1000
    with demo.bar(None, f"{head} training") as bar:
        while process.poll() is None:
            time.sleep(TRAIN_POLL_S)
            try:
                run = _latest_run(client, since_ms)
                if run is None:
                    continue
                done = len(client.get_metric_history(run.info.run_id, "val_auroc_abnormal"))
                metrics = run.data.metrics
                epochs = int(run.data.params.get("epochs", 0)) or None
            except Exception:  # MLflow busy or restarting: the bar waits, the training goes on
                continue
            bar.total = epochs
            bar.n = min(done, epochs or done)
            if "train_loss" in metrics:
                bar.set_postfix_str(
                    f"loss {metrics['train_loss']:.3f} val AUROC {metrics.get('val_auroc_abnormal', float('nan')):.3f}"
                )
            bar.refresh()


def train_model(demo: Demo, data: Path, recipe: str) -> None:
    head = demo.begin("model")
    if not (data / "labels.csv").is_file():
        demo.notes["model"] = "the untrained initial model (no labels.csv in the data: nothing to train on)"
        demo.say(f"{head} - no labels.csv in {data}: the untrained initial model is served")
        return
    argv = [sys.executable, "-m", "cxr_triage", "train", "--data", str(data), "--recipe", recipe]
    argv += ["--if-no-champion", "--promote", "--json", "--no-progress"]
    log = demo.log("train")
    started = time.monotonic()
    with log.open("a", encoding="utf-8") as out:
        process = subprocess.Popen(
            argv, env=demo.env | {"CXR_LOG_FILE": str(log)}, stdout=subprocess.PIPE, stderr=out, text=True
        )
        _watch_training(demo, process, head)
        stdout, _ = process.communicate()
        out.write(stdout)
    if process.returncode != 0:
        raise demo.failed("training failed", "train")
    payload = json.loads(stdout[stdout.rindex("\n{") + 1 :] if "\n{" in stdout else stdout)
    if not payload.get("trained", True):
        demo.notes["model"] = _champion_note(demo)
        demo.say(f"{head} ✓ a champion is already served: {demo.notes['model']}")
        return
    v = payload["validation"]
    promotion = payload.get("promotion") or {}
    figures = f"validation abnormal AUROC {v['auroc_abnormal']:.3f}, sensitivity {v['sensitivity']:.2f}"
    registered = f"MLflow version {payload['model_version']}"
    if promotion.get("promoted"):
        what = f"{registered} promoted, served as version {promotion['served_version']}"
        demo.notes["model"] = (
            f"version {promotion['served_version']} ({registered}, recipe {recipe}): {figures}"
        )
    else:
        what = f"{registered} registered; the gate kept the champion"
        demo.notes["model"] = f"the champion (the gate refused {registered}: {figures})"
    demo.say(f"{head} ✓ {what} in {_seconds(time.monotonic() - started)}: {figures}")


def _champion_note(demo: Demo) -> str:
    import mlflow

    client = mlflow.MlflowClient(
        tracking_uri=demo.settings.mlflow_tracking_uri, registry_uri=demo.settings.mlflow_tracking_uri
    )
    try:
        version = client.get_model_version_by_alias(demo.settings.model_name, "champion")
    except Exception:
        return "the served model (no champion in the MLflow registry)"
    tags = version.tags
    return (
        f"version {version.version}: validation macro AUROC {tags.get('cxr.val_auroc_macro', '?')}, "
        f"sensitivity {tags.get('cxr.val_sensitivity', '?')}"
    )


def produce_files(demo: Demo, images: Path) -> list[str]:
    head = demo.begin("files")
    done = demo.cxr("produce", "produce", "--json", *(["--progress"] if demo.bars else []), str(images),
                    timeout_s=1800, show_stderr=demo.bars)  # fmt: skip
    if done.returncode not in (0, 1) or "{" not in done.stdout:
        raise demo.failed("publishing the files failed", "produce")
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    ids = sorted({item["study_id"] for item in summary["published"]})
    rejected = (
        f", {summary['n_rejected']} rejected (reasons in {demo.log('produce')})"
        if summary["n_rejected"]
        else ""
    )
    demo.say(f"{head} ✓ {summary['n_published']} images published as {len(ids)} studies{rejected}")
    with demo.log("produce").open("a", encoding="utf-8") as out:
        out.write(json.dumps({k: v for k, v in summary.items() if k != "published"}) + "\n")
    return ids


@contextmanager
def _redis(demo: Demo) -> Iterator[Any]:
    client = open_redis(demo.settings, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


def _dicom_studies(demo: Demo) -> set[str]:
    keys = WorklistKeys(demo.settings.redis_key_prefix)
    with _redis(demo) as r:
        members = list(r.zrange(keys.worklist, 0, -1))
        pipe = r.pipeline(transaction=False)
        for study_id in members:
            pipe.hget(keys.study(study_id), "content_type")
        kinds = pipe.execute()
    return {s for s, kind in zip(members, kinds, strict=True) if kind == "application/dicom"}


def send_dicom(demo: Demo, images: Path, studies: int) -> tuple[Path, set[str], int]:
    """Demo DICOM studies sent to the gateway; returns their folder, the DICOM studies before, how many sent."""
    head = demo.begin("DICOM")
    folder = demo.settings.home / "demo-dicom"
    if not studies:
        demo.say(f"{head} - none asked for (--dicom-studies 0)")
        return folder, set(), 0
    if shutil.which("storescu") is None:
        demo.say(
            f"{head} - dcmtk's storescu is not installed (make setup installs it): no DICOM studies sent"
        )
        return folder, set(), 0
    shutil.rmtree(folder, ignore_errors=True)
    made = demo.run("dicom", [sys.executable, "-m", "producers.sample_dicom", str(images), str(folder), "--studies", str(studies)], timeout_s=300)  # fmt: skip
    if made.returncode != 0:
        raise demo.failed("making the demo DICOM studies failed", "dicom")
    before = _dicom_studies(demo)
    for study in sorted((folder / "first").iterdir()):
        if demo.run("dicom", _storescu(demo, study), timeout_s=120).returncode != 0:
            raise demo.failed("storescu could not send a study to the gateway", "dicom")
    demo.say(f"{head} ✓ {studies} studies (a PA and a lateral each) sent to the gateway with storescu")
    return folder, before, studies


def _storescu(demo: Demo, study: Path) -> list[str]:
    port = str(demo.settings.dicom_port)
    return ["storescu", "+sd", "+r", "-aec", demo.settings.dicom_ae_title, "127.0.0.1", port, str(study)]


def wait_scored(
    demo: Demo, ids: list[str], dicom_before: set[str], dicom_studies: int, timeout_s: float
) -> None:
    head = demo.begin("scoring")
    keys = WorklistKeys(demo.settings.redis_key_prefix)
    total = len(ids) + dicom_studies
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()

    def scored() -> int:
        with _redis(demo) as r:
            pipe = r.pipeline(transaction=False)
            for study_id in ids:
                pipe.hexists(keys.study(study_id), "scored_at")
            files = sum(bool(found) for found in pipe.execute())
        return files + min(len(_dicom_studies(demo) - dicom_before), dicom_studies)

    with demo.bar(total, f"{head} studies") as bar:
        while (done := scored()) < total and time.monotonic() < deadline:
            bar.n = done
            bar.refresh()
            time.sleep(1.0)
    if done < total:
        raise DemoFailed(
            f"{done} of {total} studies scored after {timeout_s:.0f} s: see {demo.logs}/worker-0.log "
            "and `cxr-triage status`"
        )
    demo.say(f"{head} ✓ {total} of {total} studies scored in {_seconds(time.monotonic() - started)}")


def send_late(demo: Demo, folder: Path) -> None:
    head = demo.begin("late images")
    late = sorted((folder / "late").iterdir()) if (folder / "late").is_dir() else []
    if not late:
        demo.say(f"{head} - none sent")
        return
    keys = WorklistKeys(demo.settings.redis_key_prefix)
    with _redis(demo) as r:
        before = int(r.zcard(keys.worklist))
    for study in late:
        if demo.run("dicom", _storescu(demo, study), timeout_s=120).returncode != 0:
            raise demo.failed("storescu could not send a late image", "dicom")
    time.sleep(5.0)  # the gateway publishes at the association's end; the worker scores within a second
    with _redis(demo) as r:
        after = int(r.zcard(keys.worklist))
    joined = (
        "joined their studies (no second entry)" if after == before else f"made {after - before} new entries"
    )
    demo.say(f"{head} ✓ {len(late)} late repeat PA images {joined}")


def summary(demo: Demo) -> None:
    keys = WorklistKeys(demo.settings.redis_key_prefix)
    with _redis(demo) as r:
        scored = int(r.zcard(keys.worklist))
        tiers = {tier.value: int(r.zcard(keys.unread(tier))) for tier in TIERS}
    done = demo.cxr("users", "users", "add", "demo", "--role", "radiologist", "--json", timeout_s=60)
    if done.returncode != 0:
        done = demo.cxr(
            "users", "users", "add", "demo", "--role", "radiologist", "--rotate", "--json", timeout_s=60
        )
    token = (
        json.loads(done.stdout)["token"] if done.returncode == 0 else "(see `cxr-triage users add --help`)"
    )
    top = demo.cxr("worklist", "worklist", "--limit", "5", "--token", token, timeout_s=60).stdout.rstrip()
    spread = ", ".join(f"{count} {tier}" for tier, count in tiers.items())
    demo.say("")
    demo.say("Summary")
    demo.say(f"  studies scored  {scored} on the worklist; unread by tier: {spread}")
    demo.say(f"  served model    {demo.notes.get('model', 'the served model')}")
    demo.say(f"  worklist page   {demo.settings.api_url}/  (sign in with the token of radiologist 'demo')")
    demo.say(f"  token           {token}")
    demo.say(f"  system view     the page's System button; Prometheus at {demo.settings.prometheus_url}")
    demo.say(f"  logs            {demo.logs}/   stop with: make down (data stays in {demo.settings.home})")
    if top:
        demo.say("")
        demo.say("The top of the worklist:")
        demo.say(top)


@click.command()
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path, resolve_path=True),
    required=True,
    help="Chest X-rays to send (PNG/JPEG/DICOM); with a CheXpert-style labels.csv the demo trains on them first.",
)
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path, resolve_path=True),
              default=None, help="Where the images are, if not DATA itself (e.g. DATA/images).")  # fmt: skip
@click.option("--recipe", default="demo", show_default=True, help="Training recipe (trainer/recipes.py).")
@click.option("--dicom-studies", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--timeout-s", type=click.FloatRange(min=10), default=900, show_default=True,
              help="How long scoring may take.")  # fmt: skip
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal).")
def demo(
    data: Path, images: Path | None, recipe: str, dicom_studies: int, timeout_s: float, progress: bool | None
) -> None:
    """Start the stack, train a model if there are labels, send the images and DICOM studies, wait until
    every study is scored, then print where to read them. Logs: $CXR_HOME/logs/demo-*.log."""
    settings = load_settings().model_copy(update={"observability_enabled": True})
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ) | {"CXR_OBSERVABILITY_ENABLED": "true", "CXR_HOME": str(settings.home)}
    run = Demo(settings, env, bars=sys.stderr.isatty() if progress is None else progress)
    images = images or (data / "images" if (data / "images").is_dir() else data)
    click.echo(f"cxr-triage demo: state in {settings.home}, logs in {settings.logs_dir}")
    start_stack(run)
    train_model(run, data, recipe)
    ids = produce_files(run, images)
    folder, dicom_before, sent = send_dicom(run, images, dicom_studies)
    wait_scored(run, ids, dicom_before, sent, timeout_s)
    send_late(run, folder)
    summary(run)
