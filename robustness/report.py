"""Robustness reports: ``report.json``, ``curves.csv``, a self-contained ``report.html`` and ``report.pdf``.

The HTML page embeds everything (plots as base64 PNG, thumbnails as base64 JPEG, inline CSS, no script),
so it can be archived or attached to a ticket as one file. Plots use matplotlib's Agg canvas directly
(no pyplot global state), so reports can be written from threads or servers.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from id2_plugin.extras import require

from ._pdf import failure_figures, table_figures, title_figure
from .results import METRIC_FIELDS, CurvePoint, RobustnessResult

#: Curve-point columns, in the order of ``curves.csv``.
CSV_FIELDS = (
    "series",
    "method",
    "resize_policy",
    "attack",
    "label",
    "intensity",
    "level",
    *METRIC_FIELDS,
    "top1_low",
    "top1_high",
    "threshold",
    "recall_at_threshold",
    "recall_at_threshold_low",
    "recall_at_threshold_high",
)
PLOT_METRICS = (
    ("top1", "top-1 accuracy"),
    ("micro_ap", "micro-AP (ISC)"),
    ("recall_at_p999", "recall @ 99.9% precision"),
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.9em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}tr.clean td{background:#fafafa;color:#666}
img.plot{max-width:100%;border:1px solid #eee}
.fail{display:inline-block;margin:6px;padding:6px;border:1px solid #ddd;font-size:.8em;vertical-align:top}
.fail img{height:96px;margin:2px;border:1px solid #ccc}.fail .cap{display:flex;gap:4px}
.fail figure{margin:0;text-align:center}.bad{color:#b00}.good{color:#070}
code{background:#f5f5f5;padding:1px 4px}.note{color:#555;font-size:.9em}
"""


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


# --------------------------------------------------------------------------------------------------
# JSON / CSV
# --------------------------------------------------------------------------------------------------
def result_to_dict(result: RobustnessResult) -> dict[str, Any]:
    """The JSON document: provenance, data set, suite, every curve point, failures and findings."""
    return {
        "provenance": result.provenance,
        "dataset": result.dataset,
        "suite": result.suite,
        "series": [s.__dict__ for s in result.series],
        "points": [p.to_dict() for p in result.points],
        "failures": [f.to_dict() for f in result.failures],
        "findings": {"resize_policy": result.findings()},
        "notes": result.notes,
    }


def write_json(result: RobustnessResult, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_text(json.dumps(result_to_dict(result), indent=2, default=str) + "\n")
    return path


def write_csv(result: RobustnessResult, path: str | os.PathLike) -> Path:
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_FIELDS))
        w.writeheader()
        for p in result.points:
            d = p.to_dict()
            w.writerow({k: "" if d[k] is None else d[k] for k in CSV_FIELDS})
    return path


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------
def _families(result: RobustnessResult) -> list[str]:
    return [s["family"] for s in result.suite if s["family"] != "clean"]


def _level_labels(result: RobustnessResult, family: str) -> list[str]:
    entry = next(s for s in result.suite if s["family"] == family)
    return ["clean"] + [lv["label"].split("+")[-1].split(":", 1)[-1] for lv in entry["levels"]]


def _grid_figure(result: RobustnessResult, metric: str, title: str, series: Sequence[str]) -> Any:
    """One subplot per attack family: ``metric`` from clean to the strongest level, one line per series."""
    figure_mod = require("matplotlib.figure")
    fams = _families(result)
    ncols = min(3, max(1, len(fams)))
    nrows = max(1, -(-len(fams) // ncols))
    fig = figure_mod.Figure(figsize=(4.2 * ncols, 3.1 * nrows + 0.6), dpi=100, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    styles = {"squash": "-", "center_crop": "--", "pad": ":"}
    for ax, fam in zip(axes.ravel(), fams):
        labels = _level_labels(result, fam)
        for i, name in enumerate(series):
            pts = result.family_points(name, fam)
            if not pts:
                continue
            pol = pts[0].resize_policy
            # Equal curves (e.g. every method at 1.0) would hide each other: each series gets its own
            # marker and a small fixed offset, stated in the legend note.
            dx, dy = _offset(i, len(series))
            ax.plot(
                [p.level + dx for p in pts],
                [getattr(p, metric) + dy for p in pts],
                marker=_MARKERS[i % len(_MARKERS)],
                ms=6,
                lw=1.8,
                alpha=0.85,
                ls=styles.get(pol, "-"),
                color=f"C{_method_colour(result, pts[0].method)}",
                label=name,
            )
        ax.set_title(fam, fontsize=10)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylim(-0.05, 1.06)
        ax.grid(alpha=0.3)
        ax.set_xlabel("mild → strong", fontsize=8)
    for ax in axes.ravel()[len(fams) :]:
        ax.set_visible(False)
    handles, names = axes.ravel()[0].get_legend_handles_labels()
    legend = fig.legend(
        handles,
        names,
        loc="outside lower center",
        ncols=min(6, max(1, len(names))),
        fontsize=9,
        title=_OFFSET_NOTE if len(series) > 1 else None,
        title_fontsize=8,
    )
    legend.get_title().set_color("#555555")
    fig.suptitle(title, fontsize=12)
    return fig


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: the largest offset drawn, in level units (x) and metric units (y)
_MAX_DX, _MAX_DY = 0.12, 0.025
_OFFSET_NOTE = (
    f"series are drawn up to ±{_MAX_DY} apart (and ±{_MAX_DX} along the level axis) so equal "
    "values stay visible; the tables give the exact numbers"
)


def _offset(i: int, n: int) -> tuple[float, float]:
    """Series ``i`` of ``n``: a fixed small (dx, dy), spread evenly and centred on zero."""
    if n < 2:
        return 0.0, 0.0
    t = 2 * i / (n - 1) - 1
    return _MAX_DX * t, -_MAX_DY * t


def _method_colour(result: RobustnessResult, method: str) -> int:
    methods = list(dict.fromkeys(s.method for s in result.series))
    return methods.index(method) % 10


def figures(result: RobustnessResult) -> list[tuple[str, Any]]:
    """(title, matplotlib Figure) pairs: one grid per metric, plus the resize-policy comparison."""
    primary = [s.name for s in result.series if s.primary]
    out = [(title, _grid_figure(result, metric, f"{title} under attack", primary)) for metric, title in PLOT_METRICS]
    if any(not s.primary for s in result.series):
        latent = [s.name for s in result.series if s.method in {x.method for x in result.series if not x.primary}]
        out.append(
            (
                "resize policy: top-1",
                _grid_figure(result, "top1", "top-1 by resize policy (— squash, -- center_crop, ·· pad)", latent),
            )
        )
    return out


def _png_b64(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode()


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------
def _table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1, row_classes: Sequence[str] = ()
) -> str:
    head = "".join(
        f'<th class="l">{html.escape(h)}</th>' if i < left else f"<th>{html.escape(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_classes[r]}"' if r < len(row_classes) and row_classes[r] else ""
        cells = "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _attack_rows(result: RobustnessResult, family: str) -> tuple[list[list[str]], list[str]]:
    order = [s.name for s in result.series]
    pts = [p for name in order for p in result.family_points(name, family)]
    rows, classes = [], []
    # Grouped by level (clean first), methods in series order within a level.
    for p in sorted(pts, key=lambda p: (p.level, order.index(p.series))):
        at_thr = (
            "–"
            if p.recall_at_threshold is None
            else (
                f"{_fmt(p.recall_at_threshold)} [{_fmt(p.recall_at_threshold_low)}, {_fmt(p.recall_at_threshold_high)}]"
            )
        )
        rows.append(
            [
                html.escape(p.label),
                html.escape(p.series),
                f"{_fmt(p.top1)} [{_fmt(p.top1_low)}, {_fmt(p.top1_high)}]",
                at_thr,
                _fmt(p.mAP),
                _fmt(p.micro_ap),
                _fmt(p.recall_at_p90),
                _fmt(p.threshold_at_p90),
                _fmt(p.recall_at_p999),
                _fmt(p.threshold_at_p999),
            ]
        )
        classes.append("clean" if p.attack == "clean" else "")
    return rows, classes


def _attack_table(result: RobustnessResult, family: str) -> str:
    rows, classes = _attack_rows(result, family)
    return _table(ATTACK_HEADERS, rows, left=2, row_classes=classes)


ATTACK_HEADERS = (
    "level",
    "method",
    "top1 [95% CI]",
    "MATCH at threshold [95% CI]",
    "mAP",
    "micro-AP",
    "R@P90",
    "thr@P90",
    "R@P99.9",
    "thr@P99.9",
)


def headline_rows(result: RobustnessResult) -> tuple[list[str], list[list[str]]]:
    """Top-1 of every series at the clean level and every attack level (one row per level)."""
    primary = [s.name for s in result.series]
    rows = []
    for entry in result.suite:
        for lv in entry["levels"]:
            row = [html.escape(lv["label"])]
            for name in primary:
                p = result.point(name, lv["label"])
                row.append(_fmt(p.top1) if p else "–")
            rows.append(row)
    return ["attack", *primary], rows


def _policy_section(result: RobustnessResult) -> str:
    findings = result.findings()
    if not findings:
        return (
            "<p class='note'>Only one resize policy was evaluated "
            "(run with <code>--compare-resize-policies</code> to measure the others).</p>"
        )
    parts = [
        "<p class='note'>The normaliser turns every image into a square: <code>squash</code> stretches it, "
        "<code>center_crop</code> cuts the long side, <code>pad</code> adds black borders. Means over all attacked "
        "levels; top-1 measures ranking, micro-AP and recall@99.9% precision measure how well one global "
        "threshold works.</p>"
    ]
    metrics = (("top1", "top-1"), ("micro_ap", "micro-AP"), ("recall_at_p999", "R@P99.9"))
    for method, f in findings.items():
        pols = list(f["mean_top1"])
        headers = ["attack family", *(f"{label} {pol}" for _, label in metrics for pol in pols)]
        rows = [
            [html.escape(fam), *(_fmt(f[f"per_family_mean_{m}"][fam][pol]) for m, _ in metrics for pol in pols)]
            for fam in f["per_family_mean_top1"]
        ]
        rows.append(
            ["<b>all attacks</b>", *(f"<b>{_fmt(f[f'mean_{m}'][pol])}</b>" for m, _ in metrics for pol in pols)]
        )
        summary = "; ".join(
            f"{label}: "
            + ", ".join(f"{html.escape(pol)} {_fmt(f[f'mean_{m}'][pol])}" for pol in pols)
            + f" (best {html.escape(max(pols, key=lambda pol, m=m: f[f'mean_{m}'][pol]))})"
            for m, label in metrics
        )
        parts.append(
            f"<h3>{html.escape(method)}</h3>"
            f"<p>Configured policy: <code>{html.escape(str(result.dataset.get('resize_policy')))}</code>. "
            f"{summary}.</p>" + _table(headers, rows)
        )
    return "".join(parts)


def _img(data: bytes | None, alt: str) -> str:
    if not data:
        return ""
    return f'<img alt="{html.escape(alt)}" src="data:image/jpeg;base64,{base64.b64encode(data).decode()}">'


def _failures_section(result: RobustnessResult) -> str:
    shown = [f for f in result.failures if f.query_thumb is not None]
    if not shown:
        return "<p>No failures at the strongest level of any attack.</p>"
    parts = []
    for s in result.series:
        mine = [f for f in shown if f.series == s.name]
        if not mine:
            continue
        cards = []
        for f in mine:
            cards.append(
                f'<div class="fail"><div><b>{html.escape(f.label)}</b> · {html.escape(f.query)}</div><div class="cap">'
                f"<figure>{_img(f.query_thumb, 'query')}<figcaption>query</figcaption></figure>"
                f"<figure>{_img(f.wrong_thumb, 'wrong match')}"
                f"<figcaption class='bad'>wrong {f.wrong_score:.3f}</figcaption></figure>"
                f"<figure>{_img(f.true_thumb, 'true origin')}"
                f"<figcaption class='good'>origin {f.true_score:.3f}</figcaption></figure>"
                "</div></div>"
            )
        parts.append(f"<h3>{html.escape(s.name)}</h3>{''.join(cards)}")
    return "".join(parts)


def _provenance_section(result: RobustnessResult) -> str:
    prov = dict(result.provenance)
    machine = prov.pop("machine", {}) or {}
    rows = [[html.escape(k), f"<code>{html.escape(str(v))}</code>"] for k, v in prov.items()]
    rows += [[html.escape(f"machine.{k}"), f"<code>{html.escape(str(v))}</code>"] for k, v in machine.items()]
    rows += [[html.escape(f"dataset.{k}"), html.escape(str(v))] for k, v in result.dataset.items()]
    return _table(["field", "value"], rows, left=2)


def render_html(result: RobustnessResult) -> str:
    """The whole report as one self-contained HTML string."""
    prov = result.provenance
    ds = result.dataset
    plot_html = "".join(
        f"<h3>{html.escape(title)}</h3>"
        f"<img class='plot' alt='{html.escape(title)}' src='data:image/png;base64,{_png_b64(fig)}'>"
        for title, fig in figures(result)
    )
    headers, rows = headline_rows(result)
    tables = "".join(f"<h3>{html.escape(fam)}</h3>" + _attack_table(result, fam) for fam in _families(result))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    kind = (
        "image copies: the unedited photo is the query"
        if ds.get("kind") == "photos"
        else "edited queries from a pairs manifest"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>id2-plugin robustness report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>id2-plugin robustness report</h1>
<p>{ds.get("n_queries")} queries ({html.escape(kind)}) against {ds.get("n_references")} references
({ds.get("n_distractors")} distractors); normalised to {ds.get("input_size")} px with
<code>{html.escape(str(ds.get("resize_policy")))}</code>; seed {prov.get("seed")}; {html.escape(str(prov.get("date")))}.
Methods: {html.escape(", ".join(ds.get("methods", [])))}. Top-1 is pessimistic (ties count as errors); micro-AP and
recall at precision pool the top-100 predictions of all queries (ISC 2021 definitions); thresholds are on each
method's own similarity scale (cosine for id2 / vae_raw, 1 − Hamming/bits for pdq / phash).</p>
{f'<ul class="note">{notes}</ul>' if notes else ""}
<h2>Curves</h2>
{plot_html}
<h2>Headline: top-1 per attack level</h2>
{_table(headers, rows)}
<h2>Resize policy (normaliser defence)</h2>
{_policy_section(result)}
<h2>Tables per attack</h2>
{tables}
<h2>Failure examples (strongest level of each attack)</h2>
<p class="note">Most confident errors: the attacked query, the reference ranked first (wrong) and the true origin,
with scores.</p>
{_failures_section(result)}
<h2>Provenance</h2>
{_provenance_section(result)}
</body></html>
"""


def write_html(result: RobustnessResult, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_text(render_html(result), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# PDF
# --------------------------------------------------------------------------------------------------
def _title_page(result: RobustnessResult) -> Any:
    ds, prov = result.dataset, result.provenance
    kind = (
        "image copies: the unedited photo is the query"
        if ds.get("kind") == "photos"
        else "edited queries from a pairs manifest"
    )
    intro = (
        f"{ds.get('n_queries')} queries ({kind}) against {ds.get('n_references')} references "
        f"({ds.get('n_distractors')} distractors), normalised to {ds.get('input_size')} px with "
        f"{ds.get('resize_policy')}. Top-1 is pessimistic (ties count as errors); micro-AP and recall at precision "
        "pool the top-100 predictions of all queries (ISC 2021); thresholds are on each method's own scale "
        "(cosine for id2 / vae_raw, 1 - Hamming/bits for pdq / phash)."
    )
    contents = (
        "Contents: curves per metric; top-1 per attack level; one table per attack (top-1 and MATCH at the "
        "operating threshold with 95% intervals); failure examples; provenance."
    )
    facts = [
        ("methods", ", ".join(ds.get("methods", []))),
        ("date", str(prov.get("date"))),
        ("seed", str(prov.get("seed"))),
        ("command", str(prov.get("command"))),
        ("git commit", str(prov.get("git_commit"))),
        *(("note", n) for n in result.notes),
    ]
    return title_figure("id2-plugin robustness report", [intro, contents], facts)


def _plain_rows(rows: Sequence[Sequence[str]]) -> list[list[str]]:
    """HTML table cells as plain text for the PDF."""
    return [[html.unescape(c).replace("<b>", "").replace("</b>", "") for c in r] for r in rows]


def pdf_pages(result: RobustnessResult) -> list[tuple[str, Any]]:
    """(kind, Figure) per PDF page: title, curves, headline table, one table per attack, failures, provenance."""
    plain = _plain_rows
    pages: list[tuple[str, Any]] = [("title", _title_page(result))]
    pages += [("curves", fig) for _, fig in figures(result)]
    headers, rows = headline_rows(result)
    pages += [("table", f) for f in table_figures("top-1 per attack level", headers, plain(rows))]
    for fam in _families(result):
        trows, _ = _attack_rows(result, fam)
        pages += [("table", f) for f in table_figures(f"attack: {fam}", ATTACK_HEADERS, plain(trows))]
    pages += [("failures", f) for f in failure_figures(result.failures)]
    prov = dict(result.provenance)
    machine = prov.pop("machine", {}) or {}
    prow = [[k, str(v)] for k, v in prov.items()] + [[f"machine.{k}", str(v)] for k, v in machine.items()]
    prow += [[f"dataset.{k}", str(v)] for k, v in result.dataset.items()]
    pages += [("table", f) for f in table_figures("provenance", ["field", "value"], prow)]
    return pages


def write_pdf(result: RobustnessResult, path: str | os.PathLike) -> Path:
    """The pages of :func:`pdf_pages`, in order."""
    backend_pdf = require("matplotlib.backends.backend_pdf")
    path = Path(path)
    with backend_pdf.PdfPages(path, metadata={"Title": "id2-plugin robustness report", "Creator": "id2-plugin"}) as pdf:
        for _, fig in pdf_pages(result):
            pdf.savefig(fig)
    return path


def write_reports(result: RobustnessResult, out_dir: str | os.PathLike, *, pdf: bool = True) -> dict[str, Path]:
    """Write ``report.json``, ``curves.csv``, ``report.html`` (and ``report.pdf``) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": write_json(result, out / "report.json"),
        "csv": write_csv(result, out / "curves.csv"),
        "html": write_html(result, out / "report.html"),
    }
    if pdf:
        paths["pdf"] = write_pdf(result, out / "report.pdf")
    return paths


def points_from_json(path: str | os.PathLike) -> list[CurvePoint]:
    """Curve points back from a ``report.json`` (to compare runs)."""
    data = json.loads(Path(path).read_text())
    return [CurvePoint(**p) for p in data["points"]]
