"""Experiment tracking through accelerate's trackers (``report_to``).

``capo train`` (and the drivers that run it: ``iterate``, ``sweep``, ``reproduce``) can send
its training log to one of accelerate's trackers besides ``metrics.jsonl``, which stays the
source of truth: the tracker gets the run's config once (flattened to scalars and strings)
and, every ``log_every`` steps, the same numbers as the JSONL line (``train/<key>``: loss,
implicit-reward accuracy and margin, the pairs' calibrated gap, learning rate, gradient norm,
throughput). accelerate logs on the main process only.

* ``report_to=none`` (the default): no tracker; a run writes the same files whatever
  packages are installed.
* ``tensorboard``: event files under ``<out>/tensorboard/<run name>/`` (accelerate's
  ``logging_dir``); ``aim``: an aim repository in ``<out>/aim``; ``dvclive``: ``<out>/dvclive``;
  ``wandb``: its local files under ``<out>/wandb`` unless ``WANDB_DIR`` says otherwise.
* The trackers' own settings are honoured and never overridden (no mode is ever passed):
  ``WANDB_MODE=offline``, ``WANDB_DIR``, ``MLFLOW_TRACKING_URI``, ``SWANLAB_MODE``, ... The
  project is ``tracker_project``, else the tracker's project variable (``WANDB_PROJECT``,
  ``COMET_PROJECT_NAME``, ``MLFLOW_EXPERIMENT_NAME``, ``CLEARML_PROJECT``), else ``capo``.
* A tracker whose package is absent is a config error (``missing``) naming what to install,
  raised when the config is built, before anything is loaded or written (accelerate itself
  would drop it silently).

Tracking keys never enter a run key (``unkeyed``): a run resumed or reused under another
tracker is the same run.
"""

from __future__ import annotations

import os
from pathlib import Path
from capo.config import ConfigError

# accelerate's tracker names (accelerate.tracking.LOGGER_TYPE_TO_CLASS); swanlab and trackio
# need a recent accelerate (``missing`` says so)
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")
RULE = "none | " + " | ".join(TRACKERS)  # the RULES entry of a ``report_to`` key
KEYS = ("report_to", "run_name", "tracker_project")  # tracking keys: never part of a run key
# what to install for each tracker: the pip requirement (accelerate's own version limits)
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet-ml",
            "aim": "aim<4", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio"}
PROJECT_ENV = {"wandb": "WANDB_PROJECT", "comet_ml": "COMET_PROJECT_NAME", "mlflow": "MLFLOW_EXPERIMENT_NAME",
               "clearml": "CLEARML_PROJECT", "swanlab": "SWANLAB_PROJ_NAME"}
LOG_DIRS = {"tensorboard": "tensorboard", "aim": "aim"}  # trackers that need accelerate's logging_dir
PREFIX = "train/"  # the tracker's name of a metrics.jsonl key k: train/k


def available(name: str) -> bool:
    """Whether accelerate can use tracker ``name`` here (its own ``is_<name>_available`` check)."""
    from accelerate.utils import imports

    check = getattr(imports, f"is_{name}_available", None)
    return bool(check and check())


def supported(name: str) -> bool:
    """Whether the installed accelerate has tracker ``name``."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return name in LOGGER_TYPE_TO_CLASS


def missing(report_to: str) -> str | None:
    """What is wrong with ``report_to`` on this machine (None: nothing): its package is not
    installed, or this accelerate has no such tracker. One line, naming the install."""
    if report_to == "none" or report_to not in TRACKERS:
        return None
    if not supported(report_to):
        import accelerate

        return (f"report_to = {report_to!r}: accelerate {accelerate.__version__} has no {report_to} tracker; "
                "pip install -U accelerate, or report_to=none")
    if not available(report_to):
        return (f"report_to = {report_to!r}: the {report_to} package is not installed; "
                f"pip install 'capo[{report_to}]' (or pip install '{PACKAGES[report_to]}'), or report_to=none")
    return None


def check(report_to: str) -> None:
    """Raise ``ConfigError`` when ``missing`` finds a problem."""
    if err := missing(report_to):
        raise ConfigError(err)


def unkeyed(config: dict) -> dict:
    """``config`` without the tracking keys (what a manifest's run key hashes)."""
    return {k: v for k, v in config.items() if k not in KEYS}


def flatten(values: dict, prefix: str = "") -> dict:
    """Nested dicts as ``a.b`` keys; values as trackers take them (int, float, bool, str):
    lists comma-joined, None as ``"none"``."""
    out = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        elif isinstance(v, (list, tuple)):
            out[key] = ",".join(str(x) for x in v)
        elif v is None:
            out[key] = "none"
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def default_run_name(out) -> str:
    """A run's name when nobody gave one: its output directory's name."""
    return Path(out).resolve().name or "capo"


def project_of(report_to: str, project: str | None) -> str:
    return project or os.environ.get(PROJECT_ENV.get(report_to, ""), "") or "capo"


def accelerator_kwargs(report_to: str, out) -> dict:
    """The ``Accelerator`` keywords of ``report_to`` (none: nothing, so accelerate is set up as
    without tracking). Checks the package again: nothing is created before this."""
    if report_to == "none":
        return {}
    check(report_to)
    from accelerate.utils import ProjectConfiguration

    log_dir = Path(out) / LOG_DIRS.get(report_to, "")
    return {"log_with": report_to,
            "project_config": ProjectConfiguration(project_dir=str(out), logging_dir=str(log_dir))}


def init_arguments(report_to: str, project: str, run_name: str, out) -> tuple[str, dict]:
    """``(project_name, init_kwargs)`` of accelerate's ``init_trackers`` so that each tracker
    files the run under ``project`` with the name ``run_name``, its local files under ``out``.
    Modes (online / offline) are never passed: the trackers' environment decides."""
    out = Path(out)
    if report_to == "tensorboard":  # accelerate's tensorboard dir: <logging_dir>/<project_name>
        return run_name, {}
    if report_to == "aim":  # accelerate names the aim Run after project_name
        return run_name, {"aim": {"experiment": project}}
    kw: dict = {}
    if report_to == "wandb":
        kw = {"name": run_name}
        if not os.environ.get("WANDB_DIR"):
            out.mkdir(parents=True, exist_ok=True)
            kw["dir"] = str(out)
    elif report_to == "mlflow":
        kw = {"run_name": run_name}
    elif report_to == "clearml":
        kw = {"task_name": os.environ.get("CLEARML_TASK", run_name)}
    elif report_to == "dvclive":
        kw = {"dir": str(out / "dvclive")}
    elif report_to == "swanlab":
        kw = {"experiment_name": run_name}
        if not (os.environ.get("SWANLAB_LOG_DIR") or os.environ.get("SWANLAB_LOGDIR")):
            (out / "swanlog").mkdir(parents=True, exist_ok=True)
            kw["logdir"] = str(out / "swanlog")
    elif report_to == "trackio":
        kw = {"name": run_name}
    return project, {report_to: kw} if kw else {}


class Runs:
    """The tracker runs a training started; ``finish`` ends them however the training ended
    (completed, stopped, diverged). ``accelerator.end_training()`` is not used: it also
    destroys the process group, which later stages of the same process still need."""

    def __init__(self):
        self.accelerators = []

    def start(self, accelerator, report_to: str, project: str | None, run_name: str, out, config: dict) -> None:
        """Start ``report_to``'s run (main process; the others follow accelerate's rules) and log
        ``config`` once."""
        if report_to == "none":
            return
        if not accelerator.log_with:  # accelerate dropped the tracker (its availability check disagreed)
            raise RuntimeError(f"report_to={report_to}: accelerate did not set the tracker up; "
                               f"pip install '{PACKAGES[report_to]}'")
        name, kwargs = init_arguments(report_to, project_of(report_to, project), run_name, out)
        self.accelerators.append(accelerator)
        accelerator.init_trackers(name, config=flatten(config), init_kwargs=kwargs)
        if report_to == "comet_ml" and accelerator.is_main_process:  # comet names runs after start
            accelerator.get_tracker("comet_ml", unwrap=True).set_name(run_name)

    def finish(self) -> None:
        import warnings

        for acc in self.accelerators:
            for tracker in acc.trackers:
                try:  # never hide the error that ended the training behind a tracker's own
                    tracker.finish()
                except Exception as e:  # noqa: BLE001
                    warnings.warn(f"{tracker.name}: closing the tracker run failed: {e}", stacklevel=2)
            acc.trackers = []
        self.accelerators = []


def log(accelerator, record: dict) -> None:
    """One metrics.jsonl record to the trackers (none: nothing), at its ``step``."""
    accelerator.log({f"{PREFIX}{k}": v for k, v in record.items() if k != "step"}, step=record["step"])
