"""Log-log power-law fits ``y ≈ C x^slope`` with a confidence interval on the slope.

Ordinary least squares of ``log y`` on ``log x``. Repeated ``x`` values (several
seeds at one width) are simply several points: their spread enters the residual
variance. The slope's standard error is the textbook OLS one,
``s / sqrt(Σ (log x_i − mean)^2)`` with ``s^2`` the residual variance on
``m − 2`` degrees of freedom, and the interval uses Student's t quantile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["PowerLawFit", "fit_power_law"]


@dataclass
class PowerLawFit:
    """Result of :func:`fit_power_law`: ``y ≈ exp(intercept) · x**slope``.

    Attributes
    ----------
    slope, intercept : float
        OLS coefficients of ``log y`` on ``log x`` (natural logs).
    slope_se : float
        Standard error of the slope (0 for an exact fit, ``inf`` with 2 points).
    ci_low, ci_high : float
        Two-sided ``level`` confidence interval of the slope.
    level : float
        Confidence level of the interval.
    r2 : float
        Coefficient of determination of the log-log fit.
    n_points : int
        Number of (x, y) points used.
    """

    slope: float
    intercept: float
    slope_se: float
    ci_low: float
    ci_high: float
    level: float
    r2: float
    n_points: int

    def predict(self, x: float | np.ndarray) -> np.ndarray:
        """The fitted power law at ``x``."""
        return np.exp(self.intercept) * np.asarray(x, dtype=float) ** self.slope

    def to_dict(self) -> dict[str, float | int]:
        """JSON-serialisable fields (``inf`` becomes the string ``"inf"``)."""
        return {k: (v if not (isinstance(v, float) and math.isinf(v)) else str(v)) for k, v in asdict(self).items()}

    def __str__(self) -> str:
        return (f"slope {self.slope:+.3f} ± {self.slope_se:.3f} "
                f"({100 * self.level:.0f}% CI [{self.ci_low:+.3f}, {self.ci_high:+.3f}], R² {self.r2:.3f})")


def fit_power_law(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, level: float = 0.95) -> PowerLawFit:
    """Fit ``y ≈ C x^slope`` by least squares in log-log space.

    Parameters
    ----------
    x, y : array-like of positive floats, same length (>= 2)
        Abscissae (e.g. widths, repeated once per seed) and measurements.
    level : float in (0, 1)
        Confidence level of the slope interval.

    Returns
    -------
    PowerLawFit

    Examples
    --------
    >>> fit = fit_power_law([64, 256, 1024], [1 / 8, 1 / 16, 1 / 32])
    >>> round(fit.slope, 6)
    -0.5
    """
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same number of points, got {xa.size} and {ya.size}")
    if xa.size < 2:
        raise ValueError(f"fit_power_law needs at least 2 points, got {xa.size}")
    if not (np.all(np.isfinite(xa)) and np.all(xa > 0)):
        raise ValueError("x must hold finite positive values for a log-log fit")
    if not (np.all(np.isfinite(ya)) and np.all(ya > 0)):
        raise ValueError("y must hold finite positive values for a log-log fit (got zero, negative or non-finite)")
    if not 0 < float(level) < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    lx, ly = np.log(xa), np.log(ya)
    sxx = float(np.sum((lx - lx.mean()) ** 2))
    if sxx <= 0:
        raise ValueError("x must take at least two distinct values to fit a slope")
    slope = float(np.sum((lx - lx.mean()) * (ly - ly.mean())) / sxx)
    intercept = float(ly.mean() - slope * lx.mean())
    resid = ly - (intercept + slope * lx)
    m = xa.size
    ss_res = float(np.sum(resid**2))
    ss_tot = float(np.sum((ly - ly.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    if m > 2:
        from scipy.stats import t as student_t

        se = math.sqrt(ss_res / (m - 2) / sxx)
        q = float(student_t.ppf(0.5 + level / 2, m - 2))
        half = q * se
    else:
        se, half = math.inf, math.inf
    return PowerLawFit(slope=slope, intercept=intercept, slope_se=se, ci_low=slope - half,
                       ci_high=slope + half, level=float(level), r2=r2, n_points=m)
