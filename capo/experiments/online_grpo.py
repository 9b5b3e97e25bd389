"""GRPO cells of ``capo online`` (issue #22): online GRPO beside offline and online CaPO at an
equal, stated budget, under the same protocol; and their report, ``grpo.md``.

Cells (``OnlineConfig.grpo``): ``ADVANTAGE`` trains on the mix of every reward in ``rewards``
(``sum``: their weighted raw scores, the anchors' way; ``calibrated``: capo's calibrated
win-rates averaged over the rewards; ``pareto``: minus the Pareto front index), and
``ADVANTAGE:REWARD`` on one reward. Labels ``grpo-<advantage>`` and ``grpo-<advantage>-<reward>``.

The equal budget (checked by the config, stated in the report from the runs' manifests):

- generated images: every run of the comparison samples ``n`` images for each of the
  ``train_limit`` training prompts. A GRPO run rolls out ``B = n x train_limit / (steps x
  group_size)`` prompts x ``group_size`` images per optimizer step (one step per rollout), so
  each prompt is rolled out ``n / group_size`` times;
- optimizer steps: ``steps`` for every run;
- denoiser forward+backward passes: a GRPO run trains ``grpo_steps`` chain steps of each
  image, guided (two passes per step when the model samples with CFG), a CaPO run ``steps x
  batch_size`` pairs of two unguided images; ``configs/grpo-shapes.yaml`` makes them equal.

Protocol as for the others: GRPO's KL coefficient (its ``beta``) is chosen from
``grpo_betas`` on the validation prompts by the mean win-rate over ``rewards`` (never the
gold; ``capo sweep`` with ``objective=grpo``), training seed ``seeds[0]``; the other seeds
train at the selected value; every run's last checkpoint is evaluated on the test prompts
beside the CaPO cells. Every GRPO run scores the gold on its rollouts (``monitor_rewards``),
never trained on: the over-optimisation figure (trained reward against gold along training).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from capo import artifacts
from capo.eval.stats import interval_text
from capo.experiments.online_report import base_markdown, run_label, selected_entry
from capo.experiments.preset import base_dir
from capo.report import figures, frontier
from capo.report.evidence import eval_columns, Evidence, head_to_head
from capo.report.figures import _plt, _save
from capo.stages import pairs, sweep, train
from capo.stages.grpo import rollout_prompts as indices
from capo.stages.train import option_errors
from capo.vocabulary import seed_label

ADVANTAGES = ("sum", "calibrated", "pareto")


def parse_cell(spec: str, rewards: list[str]) -> dict:
    """``"sum"`` -> the mix of ``rewards``; ``"calibrated:shapes-pref"`` -> one reward.
    ``{"label", "advantage", "rewards"}``; a ValueError names what is wrong."""
    adv, _, reward = spec.partition(":")
    if adv not in ADVANTAGES:
        raise ValueError(f"grpo: {spec!r}: advantage {adv!r} is not one of {', '.join(ADVANTAGES)}")
    if reward and reward not in rewards:
        raise ValueError(f"grpo: {spec!r}: reward {reward!r} is not among rewards {rewards}")
    return {"label": f"grpo-{adv}" + (f"-{reward}" if reward else ""), "advantage": adv,
            "rewards": [reward] if reward else list(rewards)}


def rollout_prompts_of(n: int, seed: int, rollout: int, B: int) -> list[int]:
    """The prompt indices of a single-process GRPO run's rollout (``capo.stages.grpo``)."""
    return indices(n, seed, rollout, B, 1, 0)


def prompts_per_rollout(cfg) -> int:
    """B: prompts per rollout that make a GRPO run generate ``n`` images per training prompt in
    ``steps`` rollouts of ``group_size`` images each."""
    return cfg.n * cfg.train_limit // (cfg.steps * cfg.group_size)


def contradictions(cfg):
    """What cannot hold in an ``OnlineConfig`` with GRPO cells."""
    labels = []
    for spec in cfg.grpo:
        try:
            labels.append(parse_cell(spec, list(cfg.rewards))["label"])
        except ValueError as e:
            yield str(e)
    if len(set(labels)) != len(labels):
        yield f"grpo: {cfg.grpo} names a cell twice"
    if cfg.train_limit is None:
        yield "train_limit: GRPO cells need it (the equal budget is n images for each of train_limit prompts)"
    elif (cfg.n * cfg.train_limit) % (cfg.steps * cfg.group_size):
        yield (f"group_size: n x train_limit = {cfg.n * cfg.train_limit} images cannot be rolled out in steps = "
               f"{cfg.steps} rollouts of whole groups of {cfg.group_size}")
    if cfg.n % cfg.group_size:
        yield f"group_size: {cfg.group_size} does not divide n = {cfg.n} (each prompt rolled out n / group_size times)"
    if not cfg.grpo_betas or min(cfg.grpo_betas) <= 0:
        yield "grpo_betas: give at least one KL coefficient > 0"
    if own := sorted(set(cfg.grpo_options) & {"group_size", "advantage", "monitor_rewards"}):
        yield f"grpo_options: {', '.join(own)} set by the comparison (use group_size= and the cell names)"
    else:
        yield from option_errors(cfg.grpo_options, cfg.steps, "grpo_options")


def run_cells(cfg, base: str, b: Path, models: dict[str, str], selected: dict[str, dict], log) -> None:
    """Sweep, train and register (in ``models`` / ``selected``) every GRPO cell of ``base``."""
    q, gold = cfg.quiet, [cfg.gold] if cfg.gold else []
    B = prompts_per_rollout(cfg)
    tables = {r: str(b / "samples" / "rewards" / r / "scores.parquet") for r in cfg.rewards}
    for spec in cfg.grpo:
        c = parse_cell(spec, list(cfg.rewards))
        lab = c["label"]
        # the prompts, rewards and BT transforms GRPO trains with: a pairs output on the cell's rewards
        src = b / "pairs" / ("frs-n{}".format(cfg.n) if len(c["rewards"]) > 1 else f"bw-{c['rewards'][0]}")
        if len(c["rewards"]) > 1:
            pairs.run(pairs.PairsConfig(rewards_tables=[tables[r] for r in c["rewards"]], out=str(src), selector="frs",
                                        seed=cfg.seed, n=cfg.n))
        else:
            pairs.run(pairs.PairsConfig(rewards_tables=[tables[c["rewards"][0]]], out=str(src), seed=cfg.seed))
        opts = {"group_size": cfg.group_size, "advantage": c["advantage"], "monitor_rewards": gold,
                **cfg.grpo_options}
        log(f"{base}: sweep {lab} (GRPO, {B} prompts x {cfg.group_size} images per rollout, {cfg.steps} rollouts)")
        res = sweep.run(sweep.SweepConfig(
            model=base, pairs=str(src), out=str(b / "sweep" / lab), objective="grpo", betas=list(cfg.grpo_betas),
            widen=cfg.widen, rewards=list(cfg.rewards), report_rewards=gold, val_prompts=cfg.val_prompts,
            val_limit=cfg.val_limit, val_n=cfg.val_n, eval_seed=cfg.seed, n_t=cfg.n_t, base_cache=str(b / "val-base"),
            lr=cfg.lr, steps=cfg.steps, batch_size=B, seed=cfg.seeds[0], train_options=opts, quiet=q))
        sel = res["selected"]
        selected[lab] = selected_entry(res)
        finals = {cfg.seeds[0]: sel["checkpoint"]}
        for s in cfg.seeds[1:]:
            log(f"{base}: {lab} seed {s} at beta={sel['beta']:.6g}")
            out = b / "runs" / seed_label(lab, s)
            train.run(train.TrainConfig(model=base, pairs=str(src), out=str(out), objective="grpo",
                                        beta=sel["beta_trained"], lr=cfg.lr, steps=cfg.steps, batch_size=B, seed=s,
                                        checkpoint_every=cfg.steps, keep_checkpoints=0, log_every=1, quiet=True,
                                        **opts))
            finals[s] = str(out / "final")
        for s, ck in finals.items():
            models[seed_label(lab, s)] = ck


# ----------------------------------------------------------------------------- budget
def budgets(cfg, b: Path) -> dict[str, dict]:
    """Per cell, the budget of its selected seed-0 run (every seed's run has the same):
    generated images, optimizer steps, denoiser forward+backward passes and reference forwards.
    GRPO: the manifest's own count; CaPO / DPO: n x prompts images, steps x batch_size x 2
    passes (one fwd+bwd of the policy and one reference forward per pair member)."""
    out = {}
    prompts = cfg.train_limit
    for o in cfg.objectives:
        for R in cfg.rounds:
            out[run_label(o, R)] = {"images": cfg.n * prompts, "steps": cfg.steps,
                                    "passes": cfg.steps * cfg.batch_size * 2, "reference": cfg.steps * cfg.batch_size * 2,
                                    "sampling": None}
    for spec in cfg.grpo:
        lab = parse_cell(spec, list(cfg.rewards))["label"]
        f = b / "sweep" / lab / "sweep.json"
        if not f.is_file():
            continue
        run_dir = Path(json.loads(f.read_text())["selected"]["checkpoint"]).parent
        m = artifacts.read_json(run_dir / artifacts.MANIFEST)
        bud = m["budget"]
        out[lab] = {"images": bud["rollout_images"], "steps": m["counts"]["steps"], "passes": bud["update_passes"],
                    "reference": bud["reference_passes"], "sampling": bud["rollout_passes"]}
    return out


# ----------------------------------------------------------------------------- report
def comparisons(cfg, ev) -> list[dict]:
    """The two questions of issue #22, per base: GRPO (each mix cell) vs CaPO offline and vs
    CaPO online on the trained rewards' mean and the gold; calibrated vs sum advantage, on the
    mix and on each single reward."""
    cols, names = eval_columns(ev, dict(zip(cfg.rewards, cfg.roles)))
    crit = tuple(r for r in cfg.rewards if r in cols)
    golds = [(names[g], ("win", g)) for g in cols if g not in crit]
    mix = [("mean of " + "/".join(names[r] for r in crit), ("mean-win", crit))] + golds
    cells = [parse_cell(s, list(cfg.rewards)) for s in cfg.grpo]
    out = []
    capo_cells = [run_label("capo", R) for R in sorted(cfg.rounds)] if "capo" in cfg.objectives else []
    for c in cells:
        if len(c["rewards"]) > 1:
            out += [{"table": "grpo", "a": c["label"], "b": k, "metrics": mix, "claim": None} for k in capo_cells]
    for c in cells:
        if c["advantage"] == "calibrated":
            twin = next((d for d in cells if d["advantage"] == "sum" and d["rewards"] == c["rewards"]), None)
            if twin:
                metrics = mix if len(c["rewards"]) > 1 else [(names.get(c["rewards"][0], c["rewards"][0]),
                                                              ("win", c["rewards"][0]))] + golds
                out.append({"table": "grpo", "a": c["label"], "b": twin["label"], "metrics": metrics, "claim": None})
    return [c for c in out if ev.has(c["a"]) and ev.has(c["b"])]


def rows(cfg) -> list[tuple[str, str]]:
    """The report table's rows: (name, cell)."""
    out = [(f"{'CaPO' if o == 'capo' else o.upper()} " + ("offline" if R == 1 else f"online, R = {R}"), run_label(o, R))
           for o in cfg.objectives for R in sorted(cfg.rounds)]
    for s in cfg.grpo:
        c = parse_cell(s, list(cfg.rewards))
        on = "the reward mix" if len(c["rewards"]) > 1 else dict(zip(cfg.rewards, cfg.roles)).get(c["rewards"][0])
        out.append((f"GRPO, {c['advantage']} advantage, {on}", c["label"]))
    return out


def matched_markdown(cfg, b: Path) -> str:
    """Validation win-rate at matched divergence of CaPO offline and the GRPO mix cells,
    interpolated along each cell's beta grid (capo.report.frontier; one training seed, descriptive)."""
    cells = [run_label("capo", 1)] + [parse_cell(s, list(cfg.rewards))["label"] for s in cfg.grpo]
    sweeps = {c: json.loads((b / "sweep" / c / "sweep.json").read_text()) for c in cells
              if (b / "sweep" / c / "sweep.json").is_file()}
    levels = frontier.common_levels(list(sweeps.values()), k=3)
    if len(sweeps) < 2 or not levels:
        return ("*The cells' validation divergence ranges do not overlap: no comparison at matched divergence "
                "(see the frontier figure).*\n")
    rewards = [(frontier.MEAN, "mean")] + ([(cfg.gold, "gold")] if cfg.gold else [])
    head = "| divergence | " + " | ".join(f"{c} {n}" for _, n in rewards for c in sweeps) + " |"
    lines = [head, "|" + "---|" * (1 + len(rewards) * len(sweeps))]
    for lv in levels:
        vals = []
        for r, _ in rewards:
            got = {c: frontier.at_divergence(s, r, [lv])[0]["win_rate"] for c, s in sweeps.items()}
            best = max((v for v in got.values() if v is not None), default=None)
            vals += ["-" if v is None else f"{v:.1f}" + (" ▲" if v == best else "") for v in got.values()]
        lines.append(f"| {lv:.3g} | " + " | ".join(vals) + " |")
    return ("Validation win-rate (%) at matched divergence from the base, interpolated along each cell's beta grid "
            "(seed 0; descriptive, no CI: ▲ marks the highest value, not a decided win):\n\n" + "\n".join(lines) + "\n")


def write_report(root: Path, reports: Path, cfg) -> list[Path]:
    """``reports/grpo.md``, ``grpo_frontier_<base>.png`` and ``grpo_overopt_<base>.png``."""
    reports.mkdir(parents=True, exist_ok=True)
    B = prompts_per_rollout(cfg)
    parts = [f"<!-- made by `capo online` (GRPO cells); experiment directory {root} -->",
             "# GRPO vs CaPO at an equal budget (issue #22)", "",
             f"Training prompts: {cfg.train_limit} of {cfg.train_prompts}; rewards {', '.join(cfg.rewards)} (in the "
             f"roles of {', '.join(cfg.roles)}); the gold ({cfg.gold}) is reported and never trained on or selected "
             f"on. GRPO rolls out {B} prompts x G = {cfg.group_size} images per optimizer step from the current "
             f"policy ({cfg.grpo_options or 'the model defaults'}); its KL coefficient is chosen from "
             f"{cfg.grpo_betas} on {cfg.val_limit or 'all'} validation prompts by the mean win-rate over the rewards, "
             f"as CaPO's beta is from {cfg.betas.get('capo')}. Training seeds {cfg.seeds}; CIs over test prompts and "
             "training seeds.", ""]
    parts += answers(cfg, root)
    paths = []
    for base in cfg.bases:
        b = root / base_dir(base)
        bud = budgets(cfg, b)
        parts += [base_markdown(cfg, b, base, rows(cfg), comparisons), ""]
        parts += ["Budget per run (the selected seed-0 run's own counts for GRPO):", "",
                  "| cell | generated images | optimizer steps | denoiser fwd+bwd passes | reference forwards | "
                  "sampling passes |", "|---|---|---|---|---|---|"]
        for c, v in bud.items():
            samp = v["sampling"] if v["sampling"] is not None else "as GRPO's (same images, same sampler)"
            parts.append(f"| {c} | {v['images']} | {v['steps']} | {v['passes']} | {v['reference']} | {samp} |")
        wall = artifacts.read_json(b / "wall.json")["seconds"] if (b / "wall.json").is_file() else None
        parts += ["", f"Wall time of this base's comparison: {wall / 60:.0f} min (one process; the two bases ran side "
                  "by side on the 2-core CPU)." if wall else "", "",
                  matched_markdown(cfg, b)]
        for name, fn in (("frontier", frontier_plot), ("overopt", overopt_plot)):
            png = reports / f"grpo_{name}_{base_dir(base)}.png"
            if fn(cfg, b, png, base):
                parts += [f"![{name}, {base}]({png.name})", ""]
                paths.append(png)
    md = reports / "grpo.md"
    artifacts.write_text(md, "\n".join(parts))
    return [md, *paths]


def answers(cfg, root: Path) -> list[str]:
    """The two questions, answered from the head-to-head intervals of every base: a verdict
    only where the interval decides it."""
    groups = {"Does GRPO beat CaPO (offline, and online) at this budget?": lambda c: c["b"].startswith("capo"),
              "Does the calibrated advantage beat the weighted sum?": lambda c: c["b"].startswith("grpo")}
    out = ["## The answers", ""]
    for q, pick in groups.items():
        found = []
        for base in cfg.bases:
            ev = Evidence(root / base_dir(base) / "eval")
            for comp in filter(pick, comparisons(cfg, ev)):
                for r in head_to_head(ev, comp):
                    d = r["delta"]
                    found.append((base, comp["a"], comp["b"], r["metric"], d, r["verdict"]))
        decided = [f for f in found if f[5] != "inconclusive"]
        out.append(f"**{q}** {len(decided)} of {len(found)} comparisons decided"
                   + (": " + "; ".join(f"{a} vs {b} on {m} ({base}): {a if v == 'reproduced' else b} ahead, "
                                      f"{interval_text(d['delta'], d['ci_low'], d['ci_high'])}"
                                      for base, a, b, m, d, v in decided) + "." if decided else
                      ": every interval includes zero, so there is no verdict either way.")
                   + (f" The widest interval is ±{max((f[4]['ci_high'] - f[4]['ci_low']) / 2 for f in found):.1f} "
                      f"points, the narrowest ±{min((f[4]['ci_high'] - f[4]['ci_low']) / 2 for f in found):.1f}."
                      if found else ""))
        out.append("")
    return out


def frontier_plot(cfg, b: Path, path: Path, base: str) -> bool:
    """Validation win-rate (mean over the rewards, and gold) against divergence along each
    cell's beta grid: CaPO offline and every GRPO cell."""
    cells = [run_label("capo", 1)] + [parse_cell(s, list(cfg.rewards))["label"] for s in cfg.grpo]
    sweeps = {c: json.loads((b / "sweep" / c / "sweep.json").read_text()) for c in cells
              if (b / "sweep" / c / "sweep.json").is_file()}
    styles = ["-", "--", "-.", ":", (0, (3, 1, 1, 1)), (0, (5, 2))]
    spec = [(c, c, "tab:green" if c.startswith("capo") else ("tab:purple" if "calibrated" in c else "tab:red"),
             styles[i % len(styles)]) for i, c in enumerate(sweeps)]
    rewards = [frontier.MEAN] + ([cfg.gold] if cfg.gold else [])
    return figures.frontier_plot(sweeps, rewards, {cfg.gold: "gold"} if cfg.gold else {}, path,
                                 title=f"{base}: GRPO and CaPO along their KL grids", cells=spec)


SMOOTH = 4  # rollouts in the over-optimisation figure's running mean


def running_mean(v: np.ndarray, k: int) -> np.ndarray:
    """Mean of the last ``k`` values at each position (fewer at the start)."""
    c = np.cumsum(np.insert(np.asarray(v, float), 0, 0.0))
    i = np.arange(1, len(v) + 1)
    return (c[i] - c[np.maximum(i - k, 0)]) / np.minimum(i, k)


def overopt_plot(cfg, b: Path, path: Path, base: str) -> bool:
    """Trained reward against gold along GRPO training. Per cell and logged step: each rollout's
    mean of every trained reward and of the gold (a monitor, never trained on) minus the base
    model's mean on the same prompts (its training samples, scored by the same rewards), in
    units of the base samples' standard deviation; averaged over the cell's trained rewards and
    over the training seeds that logged every step (seeds[1:]; seeds[0] when it is the only
    one); a running mean over ``SMOOTH`` rollouts. The path starts (square) at the first rollout:
    the base policy, but sampled along GRPO's stochastic chain, so it need not sit at (0, 0)
    (the base's samples come from its deterministic sampler); read the movement from there."""
    import pandas as pd

    if not cfg.gold:
        return False
    tables = {r: b / "samples" / "rewards" / r / "scores.parquet" for r in [*cfg.rewards, cfg.gold]}
    if not all(f.is_file() for f in tables.values()):
        return False
    scores = {r: pd.read_parquet(f) for r, f in tables.items()}
    sd = {r: float(t[r].std()) for r, t in scores.items()}
    per_prompt = {r: t.groupby("prompt_id")[r].mean() for r, t in scores.items()}
    pids = [json.loads(x)["prompt_id"] for x in (b / "samples" / "prompts.jsonl").read_text().splitlines() if x.strip()]
    B, U = prompts_per_rollout(cfg), int(cfg.grpo_options.get("grpo_updates", 1))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    drawn = False
    for spec in cfg.grpo:
        c = parse_cell(spec, list(cfg.rewards))
        logs = []
        for seed in (cfg.seeds[1:] or cfg.seeds[:1]):
            f = (b / "runs" / seed_label(c["label"], seed) / "metrics.jsonl") if seed != cfg.seeds[0] else None
            if f is None:
                sel = json.loads((b / "sweep" / c["label"] / "sweep.json").read_text())["selected"]["checkpoint"]
                f = Path(sel).parent / "metrics.jsonl"
            if f.is_file():
                logs.append((seed, [json.loads(x) for x in f.read_text().splitlines() if x.strip()]))
        logs = [(seed, lg) for seed, lg in logs if lg and f"monitor_{cfg.gold}" in lg[0]]
        if not logs:
            continue
        n = min(len(lg) for _, lg in logs)

        def gain(seed, lg, key, r):
            """The logged rollout means of ``key`` minus the base's mean on each rollout's prompts."""
            rollouts = [(x["step"] - 1) // U for x in lg[:n]]
            base_mean = [per_prompt[r][[pids[i] for i in rollout_prompts_of(len(pids), seed, k, B)]].mean()
                         for k in rollouts]
            return (np.array([x[key] for x in lg[:n]]) - np.array(base_mean)) / sd[r]
        x = np.mean([np.mean([gain(sd_, lg, f"reward_{r}", r) for r in c["rewards"]], axis=0) for sd_, lg in logs], 0)
        y = np.mean([gain(sd_, lg, f"monitor_{cfg.gold}", cfg.gold) for sd_, lg in logs], axis=0)
        x, y = running_mean(x, SMOOTH), running_mean(y, SMOOTH)  # one rollout's mean is noisy (B x G images)
        line, = ax.plot(x, y, marker="o", ms=2.5, lw=1.1, label=c["label"])
        ax.plot(x[:1], y[:1], marker="s", ms=6, mfc="none", color=line.get_color())  # step 1: the base policy
        ax.annotate(f"step {logs[0][1][n - 1]['step']}", (x[-1], y[-1]), fontsize=6)
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.axhline(0, color="k", lw=0.8, ls=":")
    ax.axvline(0, color="k", lw=0.8, ls=":")
    ax.set_xlabel("trained reward over the base, same prompts (base s.d.)", fontsize=8)
    ax.set_ylabel("gold over the base, same prompts (base s.d.)", fontsize=8)
    ax.legend(fontsize=7)
    _save(fig, path, title=f"{base}: GRPO's rollouts along training (running mean of {SMOOTH}; square: step 1)")
    return True
