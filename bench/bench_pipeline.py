"""Benchmark: the pipeline stages on the shapes world, and the harness's overhead.

Prints, on a default-size shapes model (the shipped one if built, else a fresh one of
the same architecture: speed does not depend on the weights):

* generate: images/s of `capo generate` (PNG writing, cache, manifest included) vs a
  bare ``model.sample`` loop on the same prompts, seeds and batch; overhead in %;
* score: samples/s of `capo score` with a reward model;
* train: pairs/s of `capo train` vs a bare loop computing the same CaPO step (the same
  model, batch, noise draws and loss); overhead in %.

Medians over ``--repeats`` runs, measured in one process.

    python bench/bench_pipeline.py [--kind sdxl-like] [--prompts 16] [--n 8] [--steps 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CAPO_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def model_dir(kind: str, tmp: Path) -> tuple[str, str]:
    from capo.worlds.shapes import zoo

    if (zoo.ARTIFACTS / kind / "capo_pipeline.json").is_file():
        return str(zoo.ARTIFACTS / kind), "shipped"
    import torch

    from capo.worlds.shapes.grammar import VOCAB
    from capo.worlds.shapes.pipeline import build_pipeline

    torch.manual_seed(0)
    build_pipeline(kind, VOCAB, size="default").save_pretrained(tmp / "model")
    return str(tmp / "model"), "fresh (untrained) default-size"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", default="sdxl-like", choices=["sdxl-like", "sd3-like"])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="training steps per timing")
    ap.add_argument("--batch", type=int, default=32, help="pairs per training step")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import ToyReward  # noqa: F401  (registers toy rewards for the score timing)

    from capo.models import load_model
    from capo.prompts import load_prompts
    from capo.stages import generate, pairs, score, train

    tmp = Path(tempfile.mkdtemp(prefix="capo-bench-"))
    spec, what = model_dir(a.kind, tmp)
    records = load_prompts("shapes:train", limit=a.prompts)
    (tmp / "prompts.txt").write_text("\n".join(r["prompt"] for r in records) + "\n")
    n_img = a.prompts * a.n
    print(f"model: {a.kind} ({what}); {a.prompts} prompts x {a.n} = {n_img} images; torch threads "
          f"{torch.get_num_threads()}")

    model = load_model(spec)
    prompts = [r["prompt"] for r in records for _ in range(a.n)]
    ids = [f"{i:05d}" for i in range(a.prompts)]
    seeds = [generate.item_seed(0, ids[p], k) for p in range(a.prompts) for k in range(a.n)]
    bare, harness = [], []
    for rep in range(a.repeats):
        t0 = time.perf_counter()
        for i in range(0, n_img, 64):
            model.sample(prompts[i:i + 64], seeds[i:i + 64], batch_size=64)
        bare.append(time.perf_counter() - t0)
        out = tmp / f"gen{rep}"
        t0 = time.perf_counter()
        generate.run(generate.GenerateConfig(model=spec, prompts=str(tmp / "prompts.txt"), out=str(out), n=a.n,
                                             batch_size=64, shard_prompts=max(1, 64 // a.n), quiet=True))
        harness.append(time.perf_counter() - t0)
    b, h = statistics.median(bare), statistics.median(harness)
    print(f"generate : {n_img / h:7.1f} images/s  (bare sample loop {n_img / b:.1f} images/s; harness overhead "
          f"{100 * (h - b) / b:+.1f}%, includes model load, PNG + latent cache writes)")

    sc = []
    for rep in range(a.repeats):
        shutil.rmtree(tmp / "gen0" / "rewards", ignore_errors=True)
        t0 = time.perf_counter()
        score.run(score.ScoreConfig(samples=str(tmp / "gen0"), rewards=["toy-bright", "toy-red"], quiet=True))
        sc.append(time.perf_counter() - t0)
    print(f"score    : {2 * n_img / statistics.median(sc):7.1f} samples/s  (two cheap toy rewards: I/O + harness)")

    tables = [str(tmp / "gen0" / "rewards" / r / "scores.parquet") for r in ("toy-bright", "toy-red")]
    pairs.run(pairs.PairsConfig(rewards_tables=tables, out=str(tmp / "pairs"), selector="frs"))
    th, step_rates = [], []
    for rep in range(a.repeats):
        out = tmp / f"train{rep}"
        t0 = time.perf_counter()
        train.run(train.TrainConfig(model=spec, pairs=str(tmp / "pairs"), out=str(out), steps=a.steps,
                                    batch_size=a.batch, checkpoint_every=10**9, log_every=1, quiet=True))
        th.append(time.perf_counter() - t0)
        lines = [__import__("json").loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        step_rates += [x["pairs_per_s"] for x in lines[1:]]  # steady state: the first step warms up

    # the bare step: the same computation without data loading, logging or accelerate
    from capo.method import capo_loss, implicit_reward, loss_factor, squared_error
    from capo.method.schedules import add_noise, eps_from_prediction

    m = load_model(spec)
    ref = __import__("copy").deepcopy(m.denoiser).requires_grad_(False)
    opt = torch.optim.AdamW(m.denoiser.parameters(), lr=1e-5)
    src = train.PairSource(tmp / "pairs", fresh=True)
    cache = train.LatentCache(tmp / "gen0")
    batch = src.micro_batch(0, 0, a.batch)
    pids = [x[0] for x in batch]
    x_w, x_l = cache.latents([(p, x[1]) for p, x in zip(pids, batch)]), cache.latents([(p, x[2]) for p, x in zip(pids, batch)])
    hidden, pooled = cache.text(pids)
    gap = torch.tensor([x[3] for x in batch])
    terms, t_model, eps_w, eps_l = train.draw_times_and_noise(m, x_w.shape, 0, 0, True)
    x_t = torch.cat([add_noise(x_w, eps_w, terms.alpha, terms.sigma), add_noise(x_l, eps_l, terms.alpha, terms.sigma)])
    eps, T2 = torch.cat([eps_w, eps_l]), type(terms)(*(torch.cat([v, v]) for v in terms))
    args = (torch.cat([t_model, t_model]), torch.cat([hidden, hidden]), torch.cat([pooled, pooled]))

    def err(net):
        m.denoiser = net
        return squared_error(eps_from_prediction(m.predict(x_t, *args).float(), x_t, T2.alpha, T2.sigma,
                                                 m.prediction_type), eps)

    policy = m.denoiser
    bare_t = []
    for rep in range(a.repeats):
        t0 = time.perf_counter()
        for _ in range(a.steps):
            with torch.no_grad():
                e_ref = err(ref)
            e = err(policy)
            f = loss_factor(terms.log_snr, terms.dlog_snr_dt, "constant").float()
            r = implicit_reward(e, e_ref, torch.cat([f, f]))
            loss, _ = capo_loss(r[:a.batch], r[a.batch:], 500.0, gap)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
        bare_t.append(time.perf_counter() - t0)
    hb, bb = statistics.median(th), statistics.median(bare_t)
    step = a.batch / statistics.median(step_rates)
    print(f"train    : {a.batch / step:7.1f} pairs/s per step ({step:.3f} s/step of {a.batch} pairs; bare step "
          f"{bb / a.steps:.3f} s: harness overhead per step {100 * (step - bb / a.steps) / (bb / a.steps):+.1f}%); "
          f"whole run incl. model load + final checkpoint {a.steps * a.batch / hb:.1f} pairs/s")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
