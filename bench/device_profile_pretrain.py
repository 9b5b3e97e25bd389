"""Where a GPU base-model training step of the shapes world spends its time (one short run).

    python bench/device_profile_pretrain.py    # on a CUDA machine: ms/step of each base model
                                               # with and without deterministic algorithms,
                                               # then a profile of 15 SDXL-like steps

Measured on one H100 (2026-11-26): 102 ms/step at batch 512 (SD3-like, deterministic);
15 SDXL-like steps took 1.63 s of CPU against 0.29 s of GPU time (~1,000 kernel launches a
step): the loop is bound by the host, so a larger batch costs little more per step.
"""
import contextlib
import time

import torch

from capo.worlds.shapes import models as M
from capo.worlds.shapes import pretrain as P


def timed(vae, deterministic: bool):
    real = P.deterministic
    if not deterministic:
        P.deterministic = lambda seed: contextlib.nullcontext(torch.manual_seed(seed))
    try:
        for kind in ("sdxl-like", "sd3-like"):
            t0 = time.perf_counter()
            _, f = P.train_base(kind, vae, steps=40, batch_size=512, pool_size=2048, device="cuda", progress=False)
            print(f"deterministic={deterministic} {kind}: {f['s_per_step'] * 1000:.1f} ms/step (incl. pool), "
                  f"wall {time.perf_counter() - t0:.1f}s", flush=True)
    finally:
        P.deterministic = real


def main():
    from torch.profiler import ProfilerActivity, profile

    vae = M.build_vae("default")
    timed(vae, False)
    timed(vae, True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        P.train_base("sdxl-like", vae, steps=15, batch_size=512, pool_size=2048, device="cuda", progress=False)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=50))


if __name__ == "__main__":
    main()
