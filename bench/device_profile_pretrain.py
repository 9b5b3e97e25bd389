"""Where a GPU base-model training step of the shapes world spends its time (one short run).

    python bench/device_profile_pretrain.py    # on a CUDA machine; prints s/step with and
                                               # without deterministic algorithms, then a profile
"""
import contextlib
import time

import torch

from capo.worlds.shapes import models as M
from capo.worlds.shapes import pretrain as P

vae = M.build_vae("default")
for det in (False, True):
    if not det:
        P.deterministic = lambda seed: contextlib.nullcontext(torch.manual_seed(seed))
    else:
        import importlib
        importlib.reload(P)
    for kind in ("sdxl-like", "sd3-like"):
        t0 = time.perf_counter()
        _, f = P.train_base(kind, vae, steps=40, batch_size=512, pool_size=2048, workers=1, device="cuda",
                            progress=False)
        print(f"deterministic={det} {kind}: {f['s_per_step'] * 1000:.1f} ms/step (incl. pool), "
              f"wall {time.perf_counter() - t0:.1f}s", flush=True)
P.deterministic = lambda seed: contextlib.nullcontext(torch.manual_seed(seed))
from torch.profiler import ProfilerActivity, profile

with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    P.train_base("sdxl-like", vae, steps=15, batch_size=512, pool_size=2048, workers=1, device="cuda", progress=False)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=50))
