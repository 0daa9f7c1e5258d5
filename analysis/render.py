"""Render a table of display strings (pandas, two-level columns, model section rows) as Markdown or LaTeX."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

MISSING = "–"


@dataclass
class DisplayTable:
    """Display strings in the paper's layout: ``body`` has (group, column) columns; section rows are headings."""
    title: str
    corner: str                      # the header of the row-label column ("Model & Method")
    body: pd.DataFrame               # index: row labels; columns: MultiIndex (group, sub-column)
    sections: dict[int, str] = field(default_factory=dict)   # row position -> heading shown above that row
    notes: list[str] = field(default_factory=list)

    def groups(self) -> list[tuple[str, list[str]]]:
        """Column groups in order, each with its sub-column labels."""
        ordered: dict[str, list[str]] = {}
        for group, sub in self.body.columns:
            ordered.setdefault(group, []).append(sub)
        return list(ordered.items())


def to_markdown(table: DisplayTable) -> str:
    """GitHub Markdown; a header row of groups, then a row of sub-column names, as the paper's tables print."""
    width = len(table.body.columns)
    group_row = [table.corner]
    for group, subs in table.groups():
        group_row += [group] + [""] * (len(subs) - 1)
    lines = [_md_row(group_row), _md_row(["---"] * (width + 1)), _md_row([""] + [sub for _, sub in table.body.columns])]
    for position, (label, row) in enumerate(table.body.iterrows()):
        if position in table.sections:
            lines.append(_md_row([f"**{table.sections[position]}**"] + [""] * width))
        lines.append(_md_row([str(label)] + [str(v) for v in row.tolist()]))
    return "\n".join(lines) + "\n"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                  "±": r"$\pm$", "ρ": r"$\rho$", "α": r"$\alpha$", "η": r"$\eta$", "–": "--", "×": r"$\times$",
                  "…": r"\dots{}"}
_LATEX_PATTERN = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIAL))


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters and spell the Greek letters in math mode."""
    return _LATEX_PATTERN.sub(lambda m: _LATEX_SPECIAL[m.group(0)], text)


def to_latex(table: DisplayTable, label: str) -> str:
    """A booktabs ``table`` with multicolumn group headers and italic model section rows."""
    groups = table.groups()
    width = len(table.body.columns)
    spec = "l" + "".join(" " + "c" * len(subs) for _, subs in groups)
    header = [""] + [rf"\multicolumn{{{len(subs)}}}{{c}}{{{latex_escape(g)}}}" for g, subs in groups]
    rules, start = [], 2
    for _, subs in groups:
        rules.append(rf"\cmidrule(lr){{{start}-{start + len(subs) - 1}}}")
        start += len(subs)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(header) + r" \\", " ".join(rules),
             " & ".join([latex_escape(table.corner)] + [latex_escape(sub) for _, sub in table.body.columns]) + r" \\",
             r"\midrule"]
    for position, (row_label, row) in enumerate(table.body.iterrows()):
        if position in table.sections:
            lines.append(rf"\multicolumn{{{width + 1}}}{{l}}{{\textit{{{latex_escape(table.sections[position])}}}}} \\")
        lines.append(" & ".join([latex_escape(str(row_label))] + [latex_escape(str(v)) for v in row.tolist()]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{latex_escape(table.title)}}}", rf"\label{{{label}}}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"
