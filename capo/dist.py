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
    from accelerate import Accelerator

    return Accelerator(cpu=on_cpu(), **kwargs)
