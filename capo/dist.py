"""Process-group set-up shared by the stages (accelerate), CPU-aware.

accelerate only forms a CPU process group (gloo) when asked for ``cpu=True``; without a
GPU we ask for it, so ``torchrun`` / ``accelerate launch`` / ``--num-processes`` work on
CPUs as they do on GPUs.
"""

from __future__ import annotations
from capo import artifacts
from capo.config import to_dict


def on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def partial_state():
    from accelerate import PartialState

    return PartialState(cpu=on_cpu())


def accelerator(**kwargs):
    """An ``Accelerator``. accelerate keeps one precision per process; a later stage in the same
    process (a notebook, a test, a driver running several trainings) asking for another one
    gets a fresh accelerator state, the process group untouched."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mp = kwargs.get("mixed_precision")
    if AcceleratorState._shared_state and mp is not None and str(AcceleratorState().mixed_precision) != mp:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=on_cpu(), **kwargs)


def prepare_out_dir(state, out_dir, manifest: dict, overwrite: bool) -> bool:
    """``artifacts.prepare_out_dir`` on the main process only, then every process learns
    whether the run is already complete (True: nothing to do)."""
    from pathlib import Path

    if state.is_main_process:
        artifacts.prepare_out_dir(out_dir, manifest, overwrite)
    state.wait_for_everyone()
    return bool(artifacts.read_json(Path(out_dir) / artifacts.MANIFEST).get("complete", False))


STAGE_MODULES = {"generate": "capo.stages.generate", "score": "capo.stages.score", "train": "capo.stages.train"}


def run_stage(name: str, cfg, launch: str | None = None) -> dict:
    """Stage ``name`` (generate | score | train) with config ``cfg``: in this process, or, with
    ``launch`` (a launcher prefix such as ``accelerate launch --num_processes 8`` or ``accelerate
    launch --config_file configs/accelerate/fsdp-sdxl.yaml``), as ``<launch> -m capo <name>
    --config <cfg as YAML>`` while the caller waits: how a one-process driver (sweep, reproduce)
    runs its data-parallel stages on every GPU of a node or a cluster. A failed launch raises
    ``RuntimeError`` naming the command; its output goes to this process's stdout / stderr."""
    import importlib
    import os
    import shlex
    import subprocess
    import tempfile
    from pathlib import Path

    import yaml

    if launch is None:
        return importlib.import_module(STAGE_MODULES[name]).run(cfg)
    with tempfile.NamedTemporaryFile("w", suffix=f"-{name}.yaml", delete=False) as f:
        yaml.safe_dump(to_dict(cfg), f)
    cmd = [*shlex.split(launch), "-m", "capo", name, "--config", f.name]
    env = {k: v for k, v in os.environ.items() if k not in ("CAPO_ARGV", "WORLD_SIZE", "RANK", "LOCAL_RANK")}
    try:
        rc = subprocess.run(cmd, env=env).returncode
    finally:
        Path(f.name).unlink(missing_ok=True)
    if rc != 0:
        raise RuntimeError(f"capo {name}: the launched command failed (exit {rc}): {shlex.join(cmd)}")
    return {"launched": shlex.join(cmd)}
