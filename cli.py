"""The ``capo`` command line: thin click wrappers that parse options, build a stage config
and call ``capo.stages.<stage>.run(cfg)``. Heavy imports happen inside the commands."""

from __future__ import annotations

import sys

import click

NOT_BUILT = {
    "generate": "issue #4 (pipeline: generate)",
    "score": "issue #4 (pipeline: score)",
    "train": "issue #4 (pipeline: train)",
    "merge": "issue #4 (pipeline: merge)",
    "eval": "issue #5 (evaluation modules)",
    "compare": "issue #5 (checkpoint comparison)",
    "tables": "issue #5 (Tables 1-5)",
    "reproduce": "issue #5 (reproduce presets)",
}


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _fail(msg: str) -> None:
    click.echo(f"capo: error: {msg}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="capo")
def main():
    """capo: Calibrated Preference Optimization for text-to-image diffusion.

    Typical flow: generate -> score -> pairs -> train -> merge -> eval -> tables.
    """


@main.command()
@click.argument("tables", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--selector", default="best-worst", show_default=True, help="best-worst | sum | frs")
@click.option("--rewards", help="Comma-separated reward columns (default: all non-key columns).")
@click.option("--weights", help="Comma-separated weights for sum / the FRS target (default uniform).")
@click.option("--transform", "transforms", multiple=True, metavar="REWARD=SPEC",
              help="BT transform of a reward: identity | logit | temperature:T (repeatable).")
@click.option("--seed", default=0, show_default=True, help="Seed for FRS draws.")
@click.option("--draws", default=1, show_default=True, help="FRS pairs drawn per prompt.")
@click.option("--max-tries", default=16, show_default=True, help="FRS redraws of a rejected pair.")
@click.option("--overwrite", is_flag=True, help="Replace an output directory holding a different run.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def pairs(tables, out, selector, rewards, weights, transforms, seed, draws, max_tries, overwrite, quiet):
    """Select preference pairs from reward TABLES (parquet/CSV: prompt_id, sample_id, one column per reward)."""
    from capo.artifacts import ArtifactError
    from capo.registry import UnknownNameError
    from capo.stages import pairs as stage

    try:
        tmap = {}
        for t in transforms:
            name, sep, spec = t.partition("=")
            if not sep:
                raise ValueError(f"--transform {t!r} is not of the form REWARD=SPEC")
            tmap[name] = spec
        w = [float(x) for x in _csv(weights)] if weights else None
        cfg = stage.PairsConfig(rewards_tables=list(tables), out=out, selector=selector, rewards=_csv(rewards),
                                weights=w, transforms=tmap, seed=seed, draws=draws, max_tries=max_tries,
                                overwrite=overwrite)
        res = stage.run(cfg)
    except (ValueError, ArtifactError, UnknownNameError) as e:
        _fail(str(e))
    if not quiet:
        if res["skipped"]:
            click.echo(f"pairs: {out} already holds this run (complete); nothing to do")
        else:
            c = res["counts"]
            click.echo(f"pairs: {c['pairs']} pairs from {c['prompts']} prompts ({cfg.selector}; "
                       f"{c['rejections']} rejected draws, {c['no_pair_prompts']} prompts without a pair) "
                       f"-> {out}/pairs.parquet in {res['seconds']:.2f}s")


@main.command(name="ls")
@click.argument("kind", required=False)
def ls_(kind):
    """List registered names: models, rewards, selectors, objectives, transforms."""
    from capo.registry import all_registries

    ALL = all_registries()
    kinds = [kind] if kind else sorted(ALL)
    for k in kinds:
        if k not in ALL:
            _fail(f"unknown kind {k!r}; known: {', '.join(sorted(ALL))}")
        click.echo(f"{k}:")
        reg = ALL[k]
        for name in reg.names():
            click.echo(f"  {name:<16} {reg.doc(name)}")


def _not_built(name: str, where: str):
    @main.command(name=name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                  help=f"[not built yet: {where}]", add_help_option=True)
    def _cmd():
        _fail(f"'capo {name}' is not built yet; it is tracked in {where}")

    return _cmd


for _name, _where in NOT_BUILT.items():
    _not_built(_name, _where)


if __name__ == "__main__":
    main()
