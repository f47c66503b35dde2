"""Examples shown under every command's ``--help``, kept in one place so that each reads as a user's manual.

Keys are command paths as typed after ``cxr-triage`` (``""`` is the top level). A test checks that every
installed command has its examples and that each example names options the command has.
"""

from __future__ import annotations

from typing import Final

EXAMPLES: Final[dict[str, tuple[str, ...]]] = {
    "": (
        "make demo                                     # everything, end to end, on this machine",
        "cxr-triage up --detach --observability        # start the local stack with Prometheus",
        "cxr-triage produce scans/                     # send chest X-rays",
        "cxr-triage worklist --limit 10                # the top of the worklist (CXR_API_TOKEN)",
        "cxr-triage COMMAND --help                     # each command's manual",
    ),
    "up": (
        "cxr-triage up --detach                        # everything, in the background",
        "cxr-triage up --detach --observability        # and Prometheus with the alert rules",
        "cxr-triage up --only kafka,redis              # just the peers, supervised until Ctrl-C",
    ),
    "demo": (
        "make demo                                     # set-up, then this with the public sample set",
        "cxr-triage demo --data ../shared/datasets/cxr-public",
        "cxr-triage demo --data scans/ --dicom-studies 0   # no labels: no training, the untrained model",
    ),
    "down": ("cxr-triage down                               # stop what `up` started; data stays",),
    "status": (
        "cxr-triage status                             # a table: state, pid, port, log of each component",
        "cxr-triage status --json                      # the same for scripts (Prometheus with its port)",
    ),
    "produce": (
        "cxr-triage produce scans/                     # every image under scans/, DICOM studies grouped",
        "cxr-triage produce --json a.dcm b.dcm         # a summary as JSON (files named by SHA-256)",
        "cxr-triage produce --rate 2/s --burst 10 scans/",
        "cxr-triage produce --watch /srv/pacs-export   # take files as a PACS finishes writing them",
    ),
    "dicom-gateway": (
        "cxr-triage dicom-gateway                      # C-STORE / C-ECHO on CXR_DICOM_PORT (11112)",
        "echoscu -aec CXR_TRIAGE 127.0.0.1 11112       # check it with dcmtk",
        "storescu +sd +r -aec CXR_TRIAGE 127.0.0.1 11112 study/",
    ),
    "api": ("cxr-triage api run                            # the worklist API and page on CXR_API_PORT",),
    "api run": ("cxr-triage api run                            # http://127.0.0.1:8000/ (docs: /docs)",),
    "worker": ("cxr-triage worker run --index 0              # the first inference worker",),
    "worker run": (
        "cxr-triage worker run --index 0              # metrics on CXR_WORKER_METRICS_PORT + 0",
        "CXR_WORKER_MAX_BATCH=16 cxr-triage worker run --index 1",
    ),
    "worklist": (
        "CXR_API_TOKEN=... cxr-triage worklist --limit 10",
        "cxr-triage worklist --json --token TOKEN",
        "cxr-triage worklist rebuild                   # restore Redis from the Kafka topics",
    ),
    "worklist rebuild": (
        "cxr-triage worklist rebuild                   # after a Redis loss or an SLA change",
        "cxr-triage worklist rebuild --json",
    ),
    "users": (
        "cxr-triage users add dr-lee --role radiologist  # prints the token once",
        "cxr-triage users list",
    ),
    "users add": (
        "cxr-triage users add dr-lee --role radiologist",
        "cxr-triage users add ops --role engineer --json",
        "cxr-triage users add dr-lee --role radiologist --rotate   # a new token, the old one stops working",
    ),
    "users list": ("cxr-triage users list --json",),
    "users remove": ("cxr-triage users remove dr-lee",),
    "model": (
        "cxr-triage model list                         # versions in the Triton repository",
        "cxr-triage model serve 3                      # switch the served version (no restarts)",
        "cxr-triage model shadow 4                     # evaluate version 4 beside the champion",
    ),
    "model init": ("cxr-triage model init --json                  # version 1, untrained, if none is there",),
    "model list": ("cxr-triage model list --json",),
    "model add": ("cxr-triage model add exported.onnx --serve    # a model with its cxr.* metadata",),
    "model serve": ("cxr-triage model serve 3",),
    "model shadow": (
        "cxr-triage model shadow 4 --fraction 1.0     # recorded beside the champion, orders nothing",
    ),
    "model canary": ("cxr-triage model canary 4 --fraction 0.1     # 10% of studies ordered by version 4",),
    "model status": ("cxr-triage model status --json",),
    "model rollout": ("cxr-triage model rollout stop                 # back to the champion alone",),
    "model rollout stop": ("cxr-triage model rollout stop",),
    "train": (
        "cxr-triage train --data ../shared/datasets/cxr-public --recipe demo --promote",
        "cxr-triage train --data DIR --recipe best --json",
        "cxr-triage train --data DIR --recipe demo --cv 5   # cross-validated, no model kept",
    ),
    "evaluate": (
        "cxr-triage evaluate --data DIR --json           # the champion on DIR",
        "cxr-triage evaluate --data DIR --model models:/cxr_classifier/3 --predictions-out p.csv",
    ),
    "promote": (
        "cxr-triage promote --json                     # gate the challenger; serve it if it passes",
    ),
    "rollback": ("cxr-triage rollback                           # serve the previous champion",),
    "retrain-worker": (
        "cxr-triage retrain-worker                     # `up` starts it",
        "cxr-triage retrain-worker --once --timeout-s 600",
    ),
    "rollout-worker": ("cxr-triage rollout-worker                     # `up` starts it",),
    "processors": ("cxr-triage processors run                     # `up` starts them",),
    "processors run": (
        "cxr-triage processors run                     # web and /metrics on CXR_PROCESSORS_PORT",
    ),
    "feedback": ("cxr-triage feedback stats",),
    "feedback stats": (
        "cxr-triage feedback stats                     # examples, unmatched verdicts, requests, drift",
        "cxr-triage feedback stats --json",
    ),
    "bench": ("cxr-triage bench all                          # what `make bench` runs",),
    "bench all": ("cxr-triage bench all --json",),
    "bench raw": ("cxr-triage bench raw --batch 8 --max-seconds 30",),
    "bench triton": ("cxr-triage bench triton --concurrency 4 --max-seconds 30",),
    "bench pipeline": ("cxr-triage bench pipeline --n 200 --pattern burst",),
    "bench int8": ("cxr-triage bench int8 --json",),
    "bench torch": ("cxr-triage bench torch --batch 8",),
    "bench api": ("cxr-triage bench api --studies 2000 --duration 30",),
    "simulate": (
        "cxr-triage simulate report --data DIR --prevalence 0.3",
        "cxr-triage simulate live --data DIR --studies 60 --radiologists 2",
    ),
    "simulate report": (
        "cxr-triage simulate report --data DIR --radiologists 2 --utilization 0.85 --prevalence 0.3",
        "cxr-triage simulate report --data DIR --json --out docs/business-case",
    ),
    "simulate live": (
        "cxr-triage simulate live --data DIR --pattern poisson --rate 0.5 --studies 60",
        "cxr-triage simulate live --data DIR --pattern burst --burst 20 --radiologists 3 --speed 120",
    ),
}


def epilog(path: str) -> str | None:
    """The ``Examples:`` block of ``path`` (``\\b`` keeps click from rewrapping it), None if there is none."""
    lines = EXAMPLES.get(path)
    if not lines:
        return None
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
