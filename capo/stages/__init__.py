"""Pipeline stages, one ``run(cfg)`` each: generate -> score -> pairs -> train -> merge -> eval."""
