"""`capo power` and the power table of `capo reproduce --dry-run`: the variance parts of every
head-to-head comparison of a pilot, and the designs (training seeds x prompts x images per
prompt) whose 95% CI decides a target difference with a requested probability
(``capo.eval.power`` holds the formulas).

A pilot is one of:

* evaluation or reproduce runs with per-image results (``<root>/<base>/eval`` or an eval
  directory): per comparison (``capo.report.evidence.comparisons``), the paired per-image differences
  of the chosen metric give the parts by the method of moments (``power.components``).
  Several runs holding the same prompts and images are stacked as more training seeds (e.g.
  two one-seed `quick` runs with disjoint seeds); otherwise their parts are averaged;
* a ``tables.csv`` (reports without per-image data, like the committed ``reports/``): each
  comparison's half-width gives its seed-mean variance only, and the plan takes the worst case
  over how that splits (``power.SPLITS``); the design is read from the ``tables.md`` beside it;
* the JSON ``capo power --json`` wrote (the parts, small enough to commit).

Costs: ``--preset``'s plan (``capo.experiments.budget.experiment``: GPU-hours from the measured throughput
table; for the shapes presets 2-core CPU hours from the full preset's measured timings,
``power.cpu_seconds``), else images x seeds.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from capo import artifacts
from capo.eval import power as W
from capo.eval.stats import bootstrap_contrasts
from capo.experiments import budget
from capo.experiments import preset as R
from capo.experiments.preset import prompt_count
from capo.prompts import short_name
from capo.report.evidence import comparisons, Evidence

DEFAULT_SEEDS = (3, 5, 8, 10, 12, 15, 20)
DEFAULT_IMAGES = (1, 2, 4, 8)


# ----------------------------------------------------------------------------- pilots
def _scenarios_json(sc: dict) -> dict:
    return {k: p.as_dict() for k, p in sc.items()}


def _pooled(comps: list[dict]) -> dict[str, W.Parts]:
    names = list(comps[0]["scenarios"])
    return {n: W.pool([c["scenarios"][n] for c in comps]) for n in names}


def summary_pilot(path: str | Path, metric: str = "gold", design: tuple | None = None) -> dict:
    """A pilot from a ``tables.csv`` alone (module docstring): per base, every head-to-head
    comparison's half-width on ``metric`` (``gold`` or ``claim``: each comparison's first
    metric) and the parts of every split at the run's design (``design`` = (S, P, K), else read
    from the ``tables.md`` beside the CSV)."""
    path = Path(path)
    if design is None:
        md = path.with_name("tables.md")
        m = re.search(r"(\d+) prompts; (\d+) images? per prompt.*?(\d+) training seeds per cell",
                      md.read_text() if md.is_file() else "")
        if not m:
            raise ValueError(f"{path}: no tables.md beside it stating the design (N prompts; K images per prompt; "
                             "S training seeds per cell); give it as --design S,P,K")
        design = (int(m.group(3)), int(m.group(1)), int(m.group(2)))
    S, P, K = (int(x) for x in design)
    bases: dict[str, list] = {}
    current = None
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["table"] == "h2h"]
    if not rows:
        raise ValueError(f"{path}: no head-to-head rows (a capo tables.csv has table = h2h)")
    first: dict[tuple, bool] = {}
    take = False
    for r in rows:
        if r["column"] == "metric":
            key = (r["base"], r["row"])
            current = r["text"]
            take = current == metric if metric != "claim" else key not in first
            first[key] = True
            continue
        if not r["column"].startswith("Δ") or not take or not r["ci_low"]:
            continue
        lo, hi, d = float(r["ci_low"]), float(r["ci_high"]), float(r["value"])
        table, _, name = r["row"].partition(": ")
        half = (hi - lo) / 2
        bases.setdefault(r["base"], []).append({
            "name": name, "table": table, "metric": current, "delta": d, "half": half,
            "u_seed": W.seed_variance_from_half_width(half, S),
            "scenarios": W.parts_from_half_width(half, S, P, K)})
    if not bases:
        raise ValueError(f"{path}: no head-to-head comparison on metric {metric!r} (gold | claim, or a metric name "
                         "as tables.csv writes it)")
    out = {"kind": "intervals", "source": str(path), "metric": metric, "bases": {}}
    for b, comps in sorted(bases.items()):
        u = float(np.mean([c["u_seed"] for c in comps]))
        out["bases"][b] = {"design": [S, P, K], "comparisons": comps, "u_seed": u,
                           "pooled": {n: W.parts_from_seed_variance(u, S, P, K, n) for n in W.SPLITS}}
    return out


def _evidences(path: Path) -> dict[str, object]:
    """base -> Evidence of one run directory (a reproduce root or one eval directory)."""
    if (path / "results.json").is_file():
        res = json.loads((path / "results.json").read_text())
        base = path.parent.name if path.name == "eval" else res.get("base", path.name)
        return {base: Evidence(path)}
    found = sorted(path.glob("*/eval/results.json"))
    if not found:
        raise FileNotFoundError(f"{path}: neither an evaluation directory (results.json) nor a reproduce run "
                                "(*/eval/results.json)")
    return {p.parent.parent.name: Evidence(p.parent) for p in found}


def _metric_of(comp: dict, metric: str, gold: str | None):
    if metric == "claim":
        return comp["metrics"][0]
    want = ("win", gold) if metric == "gold" else ("win", metric)
    return next(((n, m) for n, m in comp["metrics"] if m == want), None)


def image_pilot(paths: list[str | Path], rewards: list[str], roles: list[str], gold: str | None,
                metric: str = "gold") -> dict:
    """A pilot from runs with per-image results (module docstring)."""
    per_base: dict[str, list] = {}
    for p in paths:
        for b, ev in _evidences(Path(p)).items():
            per_base.setdefault(b, []).append(ev)
    role_map = dict(zip(rewards, roles))
    out = {"kind": "per-image", "source": ", ".join(str(p) for p in paths), "metric": metric, "bases": {}}
    for b, evs in sorted(per_base.items()):
        comps = []
        for comp in comparisons(evs[0], role_map, rewards[0]):
            m = _metric_of(comp, metric, gold)
            if m is None or not all(ev.has(comp["a"]) and ev.has(comp["b"]) for ev in evs):
                continue
            runs = []
            for j, ev in enumerate(evs):
                vals, pids, sids = ev.values([comp["a"], comp["b"]], m[1])
                rows = ev.frame(ev.base)[["prompt_id", "sample_id"]].astype(str).agg("/".join, axis=1).tolist()
                runs.append((vals[comp["a"]] - vals[comp["b"]], pids, np.array([f"{j}:{s}" for s in sids]), rows,
                             vals))
            same = all(r[3] == runs[0][3] for r in runs)
            if same:  # the same prompts and images: the runs' seeds are more seeds
                y = np.concatenate([r[0] for r in runs])
                pids = np.concatenate([r[1] for r in runs])
                sids = np.concatenate([r[2] for r in runs])
                est = W.components(y, pids, sids)
                parts, design = est["parts"], [est["S"], est["P"], est["K"]]
                va = {k: np.concatenate([r[4][k] for r in runs]) for k in (comp["a"], comp["b"])}
                d = bootstrap_contrasts(va, pids, sids).difference(comp["a"], comp["b"])
                delta, half = d["delta"], (d["ci_high"] - d["ci_low"]) / 2
            else:  # different images: each run's parts, averaged
                ests = [W.components(r[0], r[1], r[2]) for r in runs]
                parts = W.pool([e["parts"] for e in ests])
                design = [sum(e["S"] for e in ests), ests[0]["P"], ests[0]["K"]]
                delta, half = float(np.mean([e["mean"] for e in ests])), None
            comps.append({"name": f"{comp['a']} vs {comp['b']}", "table": comp["table"], "claim": comp["claim"],
                          "metric": m[0], "delta": delta, "half": half, "design": design,
                          "scenarios": {"measured": parts}})
        if not comps:
            raise ValueError(f"base {b}: no head-to-head comparison with metric {metric!r} "
                             f"(gold = the gold reward {gold!r}'s win-rate; claim = each comparison's own metric)")
        out["bases"][b] = {"design": comps[0]["design"], "comparisons": comps, "pooled": _pooled(comps)}
    return out


def json_pilot(path: str | Path) -> dict:
    """The pilot ``capo power --json`` wrote."""
    data = json.loads(Path(path).read_text())
    if "pilot" not in data:
        raise ValueError(f"{path}: not a capo power JSON (no 'pilot' key)")
    pilot = data["pilot"]
    for b in pilot["bases"].values():
        for c in b["comparisons"]:
            c["scenarios"] = {k: W.Parts(**v) for k, v in c["scenarios"].items()}
        b["pooled"] = {k: W.Parts(**v) for k, v in b["pooled"].items()}
    return pilot


def load_pilot(paths: list[str], rewards: list[str], roles: list[str], gold: str | None, metric: str = "gold",
               design: tuple | None = None) -> dict:
    """Any pilot (module docstring), by what ``paths`` hold."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such run, tables.csv or power JSON")
    files = [p for p in paths if p.is_file()]
    if files:
        if len(paths) > 1:
            raise ValueError("a tables.csv or power JSON pilot is read alone (give one path)")
        if files[0].suffix == ".csv":
            return summary_pilot(files[0], metric, design)
        return json_pilot(files[0])
    return image_pilot(paths, rewards, roles, gold, metric)


# ----------------------------------------------------------------------------- costs
def _design_cfg(cfg, S: int, P: int, K: int):
    seeds = list(cfg.seeds[:S]) + [max(cfg.seeds) + 1 + i for i in range(S - len(cfg.seeds))]
    return dataclasses.replace(cfg, seeds=seeds, eval_limit=P, eval_n=K, dry_run=True)


def preset_cost(cfg, memo: dict | None = None):
    """(S, P, K) -> cost of the whole preset at that design, from ``capo.experiments.budget.experiment``: CPU
    hours on the 2-core machine for the shapes presets (``power.cpu_seconds``), GPU-hours
    otherwise; ``feasible`` False when the test set has fewer than P prompts."""
    memo = {} if memo is None else memo
    cache: dict = {}

    def count(spec, limit):
        if (spec, limit) not in memo:
            memo[(spec, limit)] = prompt_count(spec, limit)
        return memo[(spec, limit)][0]

    have, P0 = count(cfg.eval_prompts, None), count(cfg.eval_prompts, cfg.eval_limit)  # the whole set, the preset's

    def cost(S: int, P: int, K: int) -> dict:
        if (S, P, K) in cache:
            return cache[(S, P, K)]
        if have is not None and P > have:
            cache[(S, P, K)] = {"value": None, "unit": "", "feasible": False,
                                "note": f"{short_name(cfg.eval_prompts)} has {have} prompts"}
            return cache[(S, P, K)]
        c = _design_cfg(cfg, S, P, K)
        if P == P0:  # the preset's own test prompts (its eval_limit, often none)
            c = dataclasses.replace(c, eval_limit=cfg.eval_limit)
        p = budget.experiment(c, memo=memo)
        kinds = {b["kind"] for b in p["bases"].values()}
        if kinds == {"shapes"}:
            value = sum(W.cpu_seconds(b) for b in p["bases"].values()) / 3600
            unit = "CPU-hours (2 cores)"
        else:
            value, unit = p["gpu_hours_total"], f"{cfg.gpu}-hours"
        out = {"value": value, "unit": unit, "feasible": True}
        cache[(S, P, K)] = out
        return out

    return cost


# ----------------------------------------------------------------------------- plans
def plan_pilot(pilot: dict, target: float, level: float = 0.8, seeds=DEFAULT_SEEDS, prompts=None,
               images=DEFAULT_IMAGES, cost=None) -> dict:
    """Per base: the grid for the typical comparison (pooled parts), the smallest design, and
    per comparison its power now and its own smallest design; then the smallest design that
    reaches ``level`` on every base."""
    out = {"bases": {}, "target": target, "level": level}
    sets = {}
    for b, entry in pilot["bases"].items():
        S0, P0, K0 = entry["design"]
        ps = sorted(set(prompts or (P0, 2 * P0, 4 * P0)))
        ss = sorted(set(seeds) | ({S0} if S0 >= 2 else set()))
        ks = sorted(set(images) | {K0})
        rows = W.grid({b: entry["pooled"]}, ss, ps, ks, target, level, cost=cost)
        comps = []
        for c in entry["comparisons"]:
            crow = W.grid({c["name"]: c["scenarios"]}, ss, ps, ks, target, level, cost=cost, mdd=False)
            now = W.assess(c["scenarios"], max(S0, 2), P0, K0, target, level, mdd=False)
            comps.append({**c, "now": now, "grid": crow, "smallest": W.smallest(crow, level)})
        out["bases"][b] = {"design": entry["design"], "grid": rows, "smallest": W.smallest(rows, level),
                           "comparisons": comps, "pooled": entry["pooled"],
                           "now": W.assess(entry["pooled"], max(S0, 2), P0, K0, target, level)}
        sets[b] = entry["pooled"]
        out["grid_args"] = (ss, ps, ks)
    if len(sets) > 1:
        ss, ps, ks = out["grid_args"]
        joint = W.grid(sets, ss, ps, ks, target, level, cost=cost)
        out["joint"] = {"grid": joint, "smallest": W.smallest(joint, level)}
    return out


def _parts_text(p: W.Parts) -> str:
    return f"{p.prompt:.2f} / {p.seed:.2f} / {p.cell:.2f} / {p.image:.1f}"


def _reaching(comps: list[dict], design: dict, level: float) -> int:
    key = (design["S"], design["P"], design["K"])
    return sum(next(r for r in c["grid"] if (r["S"], r["P"], r["K"]) == key)["power"] >= level for c in comps)


def render(pilot: dict, planned: dict, detail: bool = False, max_rows: int = 14) -> str:
    target, level = planned["target"], planned["level"]
    summary = pilot["kind"] == "intervals"
    lines = [f"# Power plan: +{target:g} points decided with {level:.0%} probability", "",
             f"Pilot: {pilot['source']} ({pilot['kind']}); metric: {pilot['metric']}; intervals: capo.eval.stats's "
             "95% CI (decided = the CI excludes 0); formulas: capo.eval.power."]
    if summary:
        lines += ["", "No per-image data: each comparison's half-width gives its seed-mean variance u_S = (half / "
                  "t_{S-1})^2 only (the seed floor of the interval; s2_prompt taken as 0); the plan takes the worst "
                  f"case over the splits of u_S ({', '.join(W.SPLITS)})."]
    else:
        lines += ["", "Variance parts (pp^2): prompt / seed / seed x prompt / image, method of moments on the paired "
                  "per-image differences."]
    for b, e in planned["bases"].items():
        S0, P0, K0 = e["design"]
        lines += ["", f"## base: {b} (pilot: {S0} seeds x {P0} prompts x {K0} images)", ""]
        head = "| # | comparison | Δ now [±half] | " + ("u_S (pp²)" if summary else "parts") + \
               f" | P(+{target:g} decided) now | smallest design at {level:.0%} | its half-width | its cost |"
        lines += [head, "|---|---|---|---|---|---|---|---|"]
        for i, c in enumerate(e["comparisons"], 1):
            sm = c["smallest"]
            now = f"{c['delta']:+.1f}" + (f" [±{c['half']:.1f}]" if c["half"] is not None else "")
            parts = f"{c['u_seed']:.2f}" if summary else _parts_text(c["scenarios"]["measured"])
            lines.append(f"| {i} | {c['name']} | {now} | {parts} | {c['now']['power']:.0%} | "
                         + (f"{W.design_name(sm)} | ±{sm['mean_half']:.1f} | {W.fmt_cost(sm['cost'])} |" if sm
                            else "none in the grid | - | - |"))
        pooled = e["pooled"]
        desc = (f"u_S = {pilot['bases'][b]['u_seed']:.2f} pp² (mean over {len(e['comparisons'])})" if summary else
                "parts " + _parts_text(pooled["measured"]) + f" (mean over {len(e['comparisons'])})")
        lines += ["", f"Typical comparison ({desc}); at the pilot's design: ±{e['now']['mean_half']:.1f}, "
                  f"+{e['now']['min_detectable']:.1f} decided with {level:.0%}, P(+{target:g} decided) "
                  f"{e['now']['power']:.0%}. Efficient designs (cheapest first, each detecting less than every "
                  "cheaper one):", ""]
        front = W.frontier(e["grid"])[:max_rows]
        sm = e["smallest"]
        mark = {(sm["S"], sm["P"], sm["K"]): "**(smallest reaching " + f"{level:.0%})**"} if sm else {}
        shown = front + ([sm] if sm and sm not in front else [])
        lines += W.render_rows(shown, target, level, mark)
        lines += ["", (f"Smallest design: {W.sentence(sm, level)}; P(+{target:g} decided) {sm['power']:.0%}"
                       + (f" (worst split: {sm['per'][b]['worst']})" if summary else "") + "; "
                       f"{_reaching(e['comparisons'], sm, level)} of {len(e['comparisons'])} comparisons reach {level:.0%} there on their "
                       "own parts.")
                  if sm else f"No design of the grid reaches {level:.0%} at +{target:g}."]
        infeasible = [r for r in e["grid"] if not r["cost"]["feasible"]]
        if infeasible:
            lines.append(f"Designs with more prompts than the test set holds are left out ({infeasible[0]['cost']['note']}).")
        if detail:
            lines += ["", f"Every design: P(+{target:g} decided) per comparison (#) and the typical one:", "",
                      "| design | " + " | ".join(f"#{i}" for i in range(1, len(e["comparisons"]) + 1)) + " | typical |",
                      "|---|" + "---|" * (len(e["comparisons"]) + 1)]
            for r in e["grid"]:
                key = (r["S"], r["P"], r["K"])
                cells = []
                for c in e["comparisons"]:
                    cr = next(x for x in c["grid"] if (x["S"], x["P"], x["K"]) == key)
                    cells.append(f"{cr['power']:.0%}")
                lines.append(f"| {W.design_name(r)} | " + " | ".join(cells) + f" | {r['power']:.0%} ±{r['mean_half']:.1f} |")
    if "joint" in planned:
        sm = planned["joint"]["smallest"]
        lines += ["", "## every base at once", "",
                  (f"Smallest design reaching {level:.0%} at +{target:g} on every base's typical comparison: "
                   f"{W.sentence(sm, level)} (lowest: {sm['worst']}, {sm['power']:.0%})." if sm else
                   f"No design of the grid reaches {level:.0%} at +{target:g} on every base.")]
    return "\n".join(lines) + "\n"


def to_json(pilot: dict, planned: dict) -> dict:
    """The pilot (parts per comparison: a pilot for a later `capo power`) and the plan's headline."""
    def row(r):
        return None if r is None else {k: r[k] for k in ("S", "P", "K", "power", "min_detectable", "mean_half", "cost")}

    bases = {}
    for b, e in pilot["bases"].items():
        bases[b] = {"design": e["design"], "pooled": _scenarios_json(e["pooled"]),
                    "comparisons": [{k: (v if k != "scenarios" else _scenarios_json(v)) for k, v in c.items()}
                                    for c in e["comparisons"]]}
        if "u_seed" in e:
            bases[b]["u_seed"] = e["u_seed"]
    plan_out = {b: {"smallest": row(e["smallest"]), "now": {k: e["now"][k] for k in ("power", "mean_half", "min_detectable")},
                    "comparisons": [{"name": c["name"], "smallest": row(c["smallest"]), "power_now": c["now"]["power"]}
                                    for c in e["comparisons"]]}
                for b, e in planned["bases"].items()}
    if "joint" in planned:
        plan_out["every base"] = {"smallest": row(planned["joint"]["smallest"])}
    return {"pilot": {**{k: pilot[k] for k in ("kind", "source", "metric")}, "bases": bases},
            "target": planned["target"], "level": planned["level"], "plan": plan_out}


def main(runs: list[str], target: float = 5.0, level: float = 0.8, metric: str = "gold", seeds=DEFAULT_SEEDS,
         prompts=None, images=DEFAULT_IMAGES, preset: str | None = None, design: tuple | None = None,
         rewards=("shapes-pref", "shapes-vqa", "shapes-aesthetic"), roles=("MPS", "VQA", "VILA"),
         gold: str | None = "shapes-gold", detail: bool = False, json_out: str | None = None) -> str:
    """`capo power`: the rendered plan (and the JSON written to ``json_out``)."""
    if not target > 0:
        raise ValueError(f"--target must be > 0 (points), got {target}")
    if not 0 < level < 1:
        raise ValueError(f"--power must lie in (0, 1), got {level}")
    pilot = load_pilot(list(runs), list(rewards), list(roles), gold, metric, design)
    cost = None
    if preset:

        cost = preset_cost(R.preset_config(preset, ["dry_run=true"]))
    planned = plan_pilot(pilot, target, level, seeds, prompts, images, cost)
    text = render(pilot, planned, detail)
    if json_out:
        artifacts.write_text(json_out, json.dumps(to_json(pilot, planned), indent=1, default=float) + "\n")
    return text


# ----------------------------------------------------------------------------- capo reproduce --dry-run
def preset_table(cfg, max_rows: int = 12, memo: dict | None = None) -> str:
    """The power section of a preset's dry run: for the candidate designs (seeds x test prompts x
    images per prompt) their cost from the plan and the difference each decides with
    ``cfg.power_level`` probability; parts from ``cfg.pilot`` or the committed full run's.
    ``memo``: the prompt counts of the preset's own plan (``capo.experiments.budget.experiment``)."""
    memo = {} if memo is None else memo
    target, level = cfg.power_target, cfg.power_level
    S0, K0 = len(cfg.seeds), cfg.eval_n
    if (cfg.eval_prompts, cfg.eval_limit) not in memo:
        memo[(cfg.eval_prompts, cfg.eval_limit)] = prompt_count(cfg.eval_prompts, cfg.eval_limit)
    P0 = memo[(cfg.eval_prompts, cfg.eval_limit)][0] or cfg.eval_limit or 2
    if cfg.pilot:
        pilot = load_pilot([cfg.pilot], list(cfg.rewards), list(cfg.roles), cfg.gold, "gold" if cfg.gold else "claim")
        have = {b: e["pooled"] for b, e in pilot["bases"].items()}
        if len(have) == 1:  # one base measured: it stands for every base
            sets = {b: next(iter(have.values())) for b in cfg.bases}
        else:
            missing = [b for b in cfg.bases if b not in have]
            if missing:
                raise ValueError(f"pilot {cfg.pilot} has no base {', '.join(missing)}; it has {', '.join(sorted(have))}")
            sets = {b: have[b] for b in cfg.bases}
        source = (f"pilot {cfg.pilot} ({pilot['kind']}, {pilot['metric']}; the mean parts over its comparisons"
                  + (f", its base {next(iter(have))} standing for every base" if len(have) == 1 else "") + ")")
    else:
        sets = {b: W.committed_scenarios(b) for b in cfg.bases}
        S, P, K = W.COMMITTED_FULL["design"]
        source = (f"defaults from the committed full run ({W.COMMITTED_FULL['source']}; {S} seeds x {P} prompts x "
                  f"{K} images; prompt / seed / seed x prompt parts " + ", ".join(
                      f"{p.prompt:.0f} / {p.seed:.1f} / {p.cell:.0f} pp² {b}" for b, p in W.COMMITTED_FULL["parts"].items())
                  + "; real bases take their family's; give pilot=RUN for your own)")
    cost = preset_cost(cfg, memo)
    seeds = sorted(set(DEFAULT_SEEDS) | {S0} - {1})
    prompts = [P0, 2 * P0, 4 * P0]
    rows = W.grid(sets, seeds, prompts, sorted(set(DEFAULT_IMAGES) | {K0}), target, level, cost=cost)
    sm = W.smallest(rows, level)
    cur = next((r for r in rows if (r["S"], r["P"], r["K"]) == (S0, P0, K0)), None)
    front = W.frontier(rows)[:max_rows]
    shown = ([cur] if cur and cur not in front else []) + front + ([sm] if sm and sm not in front else [])
    mark = {(S0, P0, K0): "(this preset)"}
    if sm:
        mark[(sm["S"], sm["P"], sm["K"])] = (mark.get((sm["S"], sm["P"], sm["K"]), "") + f" (smallest at {level:.0%})").strip()
    lines = [f"power (capo.eval.power): win-rate differences, 95% CIs of capo.eval.stats on every base; {source}"]
    lines += ["  " + x for x in W.render_rows(shown, target, level, mark)]
    lines.append("  " + (f"smallest design deciding +{target:g} with {level:.0%} probability on every base: "
                         f"{W.sentence(sm, level)}" if sm else
                         f"no design of the grid decides +{target:g} with {level:.0%} probability"))
    splits = list(next(iter(sets.values())))
    if len(splits) > 1:
        by = []
        for name in splits:
            r = W.smallest_under(rows, level, name)
            by.append(f"{name}: " + (f"{W.design_name(r)} ({W.fmt_cost(r['cost'])})" if r else "none in the grid"))
        lines.append("  smallest design by where u_S really sits (the table takes the worst): " + "; ".join(by))
    infeasible = [r for r in rows if not r["cost"]["feasible"]]
    if infeasible:
        best = min(infeasible, key=lambda r: r["min_detectable"])
        lines.append(f"  more test prompts than the test set holds ({infeasible[0]['cost']['note']}) would "
                     f"reach further: e.g. {W.design_name(best)}, +{best['min_detectable']:.1f} decided with {level:.0%}")
    return "\n".join(lines)
