"""The table model and its renderings: a ``Table`` of cells (value, CI, mark), markdown, CSV rows
and LaTeX (booktabs); bold / italics from the paired contrasts of a column."""

from __future__ import annotations

from dataclasses import dataclass, field
from capo.eval.stats import best_beyond_ci


@dataclass
class Table:
    """One rendered table: rows of cells ``{"value", "ci_low", "ci_high", "mark", "text"}``."""

    key: str  # "table1", "h2h", ...
    base: str
    title: str
    columns: list[str]
    rows: list[tuple[str, list[dict]]] = field(default_factory=list)
    note: str = ""


def plural(n: int, word: str) -> str:
    """``"1 image"``, ``"2 images"``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def cell(value=None, ci_low=None, ci_high=None, digits: int = 1, text: str | None = None, mark: str = "") -> dict:
    if text is None:
        if value is None:
            text = "-"
        elif ci_low is None:
            text = f"{value:.{digits}f}"
        else:
            text = f"{value:.{digits}f} ±{(ci_high - ci_low) / 2:.{digits}f}"
    return {"value": value, "ci_low": ci_low, "ci_high": ci_high, "mark": mark, "text": text}


def stat_cell(summary: dict | None, digits: int = 1) -> dict:
    if not summary:
        return cell()
    return cell(summary["mean"], summary["ci_low"], summary["ci_high"], digits)


def mark_column(t: Table, j: int, contrasts, arms: list[str], higher: bool = True) -> None:
    """Bold / italics in column ``j`` from the paired contrasts of ``arms`` (one per row)."""
    if contrasts is None or len(arms) < 2:
        return
    marks = best_beyond_ci(contrasts, arms, higher=higher)
    for (name, cells), arm in zip(t.rows, arms):
        cells[j]["mark"] = marks[arm]


def to_markdown(t: Table) -> str:
    def fmt(c):
        return f"**{c['text']}**" if c["mark"] == "best" else f"*{c['text']}*" if c["mark"] == "tied" else c["text"]

    lines = ["| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join([name] + [fmt(c) for c in cells]) + " |" for name, cells in t.rows]
    return (t.title + "\n\n" if t.title else "") + "\n".join(lines) + ("\n\n" + t.note if t.note else "")


def to_csv_rows(t: Table) -> list[dict]:
    return [{"table": t.key, "base": t.base, "row": name, "column": col, "value": c["value"], "ci_low": c["ci_low"],
             "ci_high": c["ci_high"], "mark": c["mark"], "text": c["text"]}
            for name, cells in t.rows for col, c in zip(t.columns[1:], cells)]


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("→", r"$\to$"), ("−", "-"), ("≤", r"$\le$"), ("≥", r"$\ge$")):
        s = s.replace(a, b)
    return s


def to_latex(t: Table) -> str:
    def fmt(c):
        x = _tex(c["text"])
        return rf"\textbf{{{x}}}" if c["mark"] == "best" else rf"\textit{{{x}}}" if c["mark"] == "tied" else x

    lines = [f"% {t.key} ({t.base}): {_tex(t.title)}", r"\begin{tabular}{l" + "r" * (len(t.columns) - 1) + "}",
             r"\toprule", " & ".join(_tex(c) for c in t.columns) + r" \\", r"\midrule"]
    lines += [" & ".join([_tex(name)] + [fmt(c) for c in cells]) + r" \\" for name, cells in t.rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)
