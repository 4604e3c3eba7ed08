"""Self-contained HTML report: figures embedded as base64 PNG, plain-words sections, verdicts.

The page needs no network and no other file: styles are inline, images are
``data:`` URIs. Every piece of text is HTML-escaped.

Examples
--------
>>> from ntkit.report.html import verdict_badge
>>> verdict_badge(True)
'<span class="badge ok">agrees</span>'
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["render_report", "verdict_badge"]

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1d2330;line-height:1.5}
h1{font-size:1.7em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:2px solid #e3e7ef;padding-bottom:.2em}
.sub{color:#5a6478}.badge{display:inline-block;padding:.05em .55em;border-radius:.8em;font-size:.85em;
font-weight:600;white-space:nowrap}.ok{background:#d8f3df;color:#17612d}.bad{background:#fde2e1;color:#9b1c1c}
.info{background:#e6ecf7;color:#2b4a7f}table{border-collapse:collapse;margin:.8em 0;font-size:.93em}
th,td{border:1px solid #d5dbe6;padding:.3em .7em;text-align:left;vertical-align:top}th{background:#f3f5f9}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #e3e7ef}figcaption{color:#5a6478;font-size:.9em}
code{background:#f3f5f9;padding:0 .25em;border-radius:3px}.summary td:first-child{white-space:nowrap}
.small{font-size:.85em;color:#5a6478}
"""


def verdict_badge(agrees: bool | None) -> str:
    """The coloured word for a verdict: agrees / disagrees / informational."""
    if agrees is None:
        return '<span class="badge info">info</span>'
    return '<span class="badge ok">agrees</span>' if agrees else '<span class="badge bad">disagrees</span>'


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _img(out_dir: str, rel: str) -> str:
    path = os.path.join(out_dir, rel)
    with open(path, "rb") as fh:
        data = base64.b64encode(fh.read()).decode("ascii")
    return f"data:image/png;base64,{data}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _verdict_rows(results: Sequence[Any], with_step: bool) -> list[list[str]]:
    rows = []
    for r in results:
        for v in r.verdicts:
            row = [verdict_badge(v.agrees), _e(v.claim), _e(v.measured), _e(v.expected)]
            if with_step:
                row.insert(1, f'<a href="#{_e(r.key)}">{_e(r.title.split(".")[0])}</a>')
            rows.append(row)
    return rows


def render_report(results: Sequence[Any], metrics: dict[str, Any], out_dir: str) -> str:
    """The HTML page for the step results (figures read from ``out_dir`` and embedded).

    Parameters
    ----------
    results : sequence of StepResult
        What :func:`ntkit.report.reproduce.run_reproduce` produced.
    metrics : dict
        The JSON-safe metrics (config, dataset, timing) shown in the header.
    out_dir : str
        Folder holding the figure files referenced by the results.
    """
    ds = metrics.get("dataset", {})
    cfg = metrics.get("config", {})
    verdicts = [v for r in results for v in r.verdicts if v.agrees is not None]
    n_ok = sum(bool(v.agrees) for v in verdicts)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>ntkit reproduce — wide networks are kernel machines</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Wide networks trained by gradient descent ≈ kernel regression with the NTK</h1>",
        f"<p class='sub'>ntkit {_e(metrics.get('ntkit_version', ''))} · data set <b>{_e(ds.get('name', '?'))}</b> "
        f"({_e(ds.get('n_train', '?'))} training / {_e(ds.get('n_test', '?'))} test examples, input shape "
        f"{_e(ds.get('input_shape', '?'))}) · architecture <code>{_e(metrics.get('architecture', ''))}</code> · "
        f"seed {_e(cfg.get('seed', ''))} · preset {_e(cfg.get('preset_name', ''))} · "
        f"{_e(round(float(metrics.get('total_seconds', 0)), 1))} s</p>",
        "<p>This report measures, on real data, the claims of the neural tangent kernel theory: as networks get "
        "wider, (1) their random kernels approach fixed analytic kernels, (2) gradient descent on them follows "
        "the closed-form dynamics of kernel regression with the NTK, (3) because their weights barely move, "
        "(4) learning each eigendirection of the kernel at its own speed, (5) so that their test performance is "
        "that of the kernel predictor, and (6) the kernel gives a data-dependent generalisation bound. Each "
        "section says what its plot shows and whether the measurement agrees with the theory.</p>",
        f"<h2 id='summary'>Summary: {n_ok} of {len(verdicts)} checks agree with the theory</h2>",
        _table(["verdict", "step", "claim", "measured", "expected"], _verdict_rows(results, True), "summary"),
    ]
    for r in results:
        parts.append(f"<h2 id='{_e(r.key)}'>{_e(r.title)}</h2>")
        parts.extend(f"<p>{_e(p)}</p>" for p in r.explanation)
        for caption, rel in r.figures.items():
            parts.append(f"<figure><img alt='{_e(caption)}' src='{_img(out_dir, rel)}'>"
                         f"<figcaption>{_e(caption)} (file <code>{_e(rel)}</code>)</figcaption></figure>")
        for t in r.tables:
            rows = [[_e(c) for c in row] for row in t["rows"]]
            parts.append(f"<p class='small'>{_e(t.get('caption', ''))}</p>" + _table(t["header"], rows))
        if r.verdicts:
            parts.append(_table(["verdict", "claim", "measured", "expected"], _verdict_rows([r], False)))
        parts.append(f"<p class='small'>step time {r.seconds:.1f} s</p>")
    impl = metrics.get("implementations", {})
    if impl:
        parts.append("<h2 id='details'>How it was computed</h2>")
        parts.append(_table(["piece", "implementation"], [[_e(k), _e(v)] for k, v in sorted(impl.items())]))
    parts.append("<p class='small'>Every number is in <code>metrics.json</code> next to this file; the figures "
                 "are also in <code>figures/</code>. Generated by <code>ntkit reproduce</code>.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
