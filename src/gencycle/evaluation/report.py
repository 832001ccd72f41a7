"""Comparison reports: score tables, bar charts, side-by-side outputs, Markdown and HTML.

A report is a title and a list of `Section`s (plain text, preformatted text,
tables, PNG images). The same sections render to Markdown (images linked) and to
one self-contained HTML page (images embedded as base64), so both always agree.
Running the variants is not done here: a runner produces `VariantResult`s and
calls `write_comparison`, or builds its own sections and calls `write_report`.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # no pyplot: the global backend (a notebook's) stays as it is


@dataclass
class VariantResult:
    """One evaluated variant (a prompt setting x a generation config) over one split."""
    name: str                     # e.g. "3-shot, greedy"
    predictions: list[str]        # one model output per example, in the split's order
    scores: dict[str, float]      # metric -> value, e.g. from metrics.text_scores
    settings: dict[str, Any] = field(default_factory=dict)  # shots, selection, generation config...


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Section:
    """A part of a report; `text` is plain text, paragraphs separated by blank lines."""
    title: str
    text: str = ""
    code: str = ""                # shown preformatted (a tokenization, a model card)
    tables: list[Table] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)


def metric_names(results: Sequence[VariantResult]) -> list[str]:
    """Metrics in first-seen order over all variants."""
    return list(dict.fromkeys(key for r in results for key in r.scores))


def scores_table(results: Sequence[VariantResult], metrics: Sequence[str] | None = None) -> Table:
    """Rows = variants, columns = metrics (4 decimals; '-' where a variant lacks a metric)."""
    metrics = list(metrics or metric_names(results))
    rows = [[r.name] + [f"{r.scores[m]:.4f}" if m in r.scores else "-" for m in metrics] for r in results]
    return Table(["variant"] + metrics, rows)


def best_variants(results: Sequence[VariantResult], metrics: Sequence[str] | None = None) -> dict[str, str]:
    """metric -> name of the variant with the highest score (all metrics here: higher is better)."""
    best = {}
    for m in metrics or metric_names(results):
        scored = [r for r in results if m in r.scores]
        if scored:
            best[m] = max(scored, key=lambda r: r.scores[m]).name
    return best


def plot_scores(results: Sequence[VariantResult], path: str | Path,
                metrics: Sequence[str] | None = None, title: str = "Scores by variant") -> Path:
    """Grouped bar chart PNG: one group per metric, one bar per variant.

    By default plots the ROUGE metrics only, which share the 0-1 scale.
    """
    metrics = list(metrics or [m for m in metric_names(results) if m.startswith("rouge")] or metric_names(results))
    width = 0.8 / max(len(results), 1)
    fig = Figure(figsize=(max(6.0, 1.6 * len(metrics) + 0.3 * len(results)), 4))
    ax = fig.subplots()
    for i, r in enumerate(results):
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(metrics))]
        ax.bar(xs, [r.scores.get(m, 0.0) for m in metrics], width, label=r.name)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_title(title)
    ax.set_ylabel("score")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never hides a bar
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def scores_section(results: Sequence[VariantResult], chart: Path | None = None,
                   title: str = "Scores") -> Section:
    best = best_variants(results)
    text = "Best per metric: " + "; ".join(
        f"{m}: {name} ({next(r for r in results if r.name == name).scores[m]:.4f})" for m, name in best.items())
    return Section(title, text=text, tables=[scores_table(results)], images=[chart] if chart else [])


def side_by_side_section(references: Sequence[str], results: Sequence[VariantResult],
                          ids: Sequence[str] | None = None, dialogues: Sequence[str] | None = None,
                          count: int = 3, title: str = "Human reference vs. model outputs") -> Section:
    """For the first `count` examples, a table of the human summary next to each variant's output."""
    tables = []
    for i in range(min(count, len(references))):
        rows = [["dialogue", dialogues[i]]] if dialogues is not None else []
        rows.append(["human reference", references[i]])
        rows += [[r.name, r.predictions[i]] for r in results]
        tables.append(Table(["source", "text"], rows, caption=f"Example {ids[i] if ids else i + 1}"))
    return Section(title, tables=tables)


def scores_json(results: Sequence[VariantResult], references: Sequence[str] | None = None,
                ids: Sequence[str] | None = None) -> dict:
    return {"metrics": metric_names(results), "variants": [asdict(r) for r in results],
            "references": list(references) if references is not None else None,
            "ids": list(ids) if ids is not None else None}


# ---- rendering ---------------------------------------------------------------------

def render_markdown(title: str, sections: Sequence[Section], base_dir: str | Path = ".") -> str:
    """Markdown of the report; image links are relative to `base_dir` (where the file goes)."""
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        if s.text:
            out += [s.text, ""]
        if s.code:
            out += ["```", s.code, "```", ""]
        for t in s.tables:
            out += ([f"**{t.caption}**", ""] if t.caption else []) + _markdown_table(t) + [""]
        for image in s.images:
            out += [f"![{Path(image).stem}]({os.path.relpath(image, base_dir)})", ""]
    return "\n".join(out)


def _markdown_table(t: Table) -> list[str]:
    cell = lambda x: str(x).replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
    lines = ["| " + " | ".join(map(cell, t.header)) + " |", "|" + "---|" * len(t.header)]
    return lines + ["| " + " | ".join(map(cell, row)) + " |" for row in t.rows]


def render_html(title: str, sections: Sequence[Section]) -> str:
    """One self-contained HTML page; PNG images are embedded as base64."""
    esc = lambda x: html.escape(str(x)).replace("\n", "<br>")  # noqa: E731
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
           "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
           "vertical-align:top;text-align:left}pre{background:#f4f4f4;padding:8px;overflow:auto}"
           "img{max-width:100%}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        out += [f"<p>{esc(p)}</p>" for p in s.text.split("\n\n") if p.strip()]
        if s.code:
            out.append(f"<pre>{html.escape(s.code)}</pre>")
        for t in s.tables:
            out.append("<table>" + (f"<caption>{esc(t.caption)}</caption>" if t.caption else ""))
            out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in t.header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in t.rows]
            out.append("</table>")
        for image in s.images:
            data = base64.b64encode(Path(image).read_bytes()).decode("ascii")
            out.append(f"<p><img alt='{html.escape(Path(image).stem)}' src='data:image/png;base64,{data}'></p>")
    return "\n".join(out + ["</body></html>"])


def write_report(out_dir: str | Path, title: str, sections: Sequence[Section],
                 name: str = "report") -> dict[str, Path]:
    """Write `{name}.md` and `{name}.html` into out_dir; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, page = out_dir / f"{name}.md", out_dir / f"{name}.html"
    md.write_text(render_markdown(title, sections, base_dir=out_dir), encoding="utf-8")
    page.write_text(render_html(title, sections), encoding="utf-8")
    return {"markdown": md, "html": page}


def write_comparison(out_dir: str | Path, results: Sequence[VariantResult], references: Sequence[str],
                     ids: Sequence[str] | None = None, dialogues: Sequence[str] | None = None,
                     count: int = 3, title: str = "Comparison of variants") -> dict[str, Path]:
    """Write scores.md, scores.json, scores.png, side_by_side.md, report.md and report.html."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for r in results:
        if len(r.predictions) != len(references):
            raise ValueError(
                f"variant {r.name!r} has {len(r.predictions)} predictions for {len(references)} references")
    chart = plot_scores(results, out_dir / "scores.png")
    scores, side = scores_section(results, chart), side_by_side_section(references, results, ids, dialogues, count)
    paths = {"chart": chart, "scores_markdown": out_dir / "scores.md", "scores_json": out_dir / "scores.json",
             "side_by_side": out_dir / "side_by_side.md"}
    paths["scores_markdown"].write_text(render_markdown(title, [scores], out_dir), encoding="utf-8")
    paths["scores_json"].write_text(json.dumps(scores_json(results, references, ids), indent=2), encoding="utf-8")
    paths["side_by_side"].write_text(render_markdown(title, [side], out_dir), encoding="utf-8")
    return paths | write_report(out_dir, title, [scores, side])
