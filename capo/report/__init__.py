"""Reporting: everything that turns evaluation results into what a reader sees.

``paper`` (the paper's numbers), ``evidence`` (results loading, comparisons and their
statistics), ``render`` (the table model; markdown, CSV, LaTeX), ``tables`` (Tables 1-5, the
head-to-head and sweep tables, ``capo tables``), ``claims`` (the paper's claims and their
verdicts), ``frontier`` (win-rate against divergence along a beta grid), ``figures`` and
``compare`` (``capo compare``'s table and CI gate). Modules import lazily: nothing here."""
