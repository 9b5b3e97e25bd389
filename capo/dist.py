"""Process-group set-up shared by the stages (accelerate), CPU-aware.

accelerate only forms a CPU process group (gloo) when asked for ``cpu=True``; without a
GPU we ask for it, so ``torchrun`` / ``accelerate launch`` / ``--num-processes`` work on
CPUs as they do on GPUs.
"""

from __future__ import annotations


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

    from capo import artifacts

    if state.is_main_process:
        artifacts.prepare_out_dir(out_dir, manifest, overwrite)
    state.wait_for_everyone()
    return bool(artifacts.read_json(Path(out_dir) / artifacts.MANIFEST).get("complete", False))
