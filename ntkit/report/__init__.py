"""The ``ntkit reproduce`` report: the seeds' claims measured on real data, as HTML + JSON.

* :func:`run_reproduce` with a :class:`ReproduceConfig` runs the six steps and
  writes ``report.html`` (self-contained), ``metrics.json`` and ``figures/``;
* each step is also a function of :mod:`ntkit.report.reproduce` returning a
  :class:`StepResult` (numbers, figures, explanation, verdicts);
* :func:`render_report` turns step results into the HTML page.

Examples
--------
>>> from ntkit.report import ReproduceConfig
>>> cfg = ReproduceConfig.preset("quick", dataset="digits")
>>> cfg.widths
(64, 256, 1024)
"""

from .html import render_report
from .reproduce import ReproduceConfig, StepResult, Verdict, run_reproduce

__all__ = ["ReproduceConfig", "StepResult", "Verdict", "run_reproduce", "render_report"]
