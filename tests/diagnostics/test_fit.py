"""Power-law fits: planted exact laws, noisy laws with tolerances from the noise level, CI coverage."""

import math

import numpy as np
import pytest
from scipy.stats import chi2

from ntkit.diagnostics import fit_power_law

WIDTHS = np.array([64, 128, 256, 512, 1024, 2048], dtype=float)


@pytest.mark.parametrize("slope", [-0.5, -1.0, 0.25])
def test_exact_power_law_recovered(slope):
    x = np.repeat(WIDTHS, 3)
    fit = fit_power_law(x, 3.7 * x**slope)
    assert fit.slope == pytest.approx(slope, abs=1e-12)
    assert math.exp(fit.intercept) == pytest.approx(3.7, rel=1e-10)
    assert fit.slope_se == pytest.approx(0.0, abs=1e-12)
    assert fit.r2 == pytest.approx(1.0)
    np.testing.assert_allclose(fit.predict(WIDTHS), 3.7 * WIDTHS**slope, rtol=1e-10)


def test_noisy_power_law_within_theoretical_standard_error():
    # log y = log C + b log x + eps, eps ~ N(0, sigma^2): the OLS slope has sd sigma / sqrt(Sxx) exactly.
    rng = np.random.default_rng(1)
    sigma, b = 0.2, -0.5
    x = np.repeat(WIDTHS, 3)
    lx = np.log(x)
    sd_theory = sigma / math.sqrt(np.sum((lx - lx.mean()) ** 2))
    y = 2.0 * x**b * np.exp(sigma * rng.standard_normal(x.size))
    fit = fit_power_law(x, y)
    assert abs(fit.slope - b) < 4 * sd_theory  # 4 sd: fails with probability 6e-5
    # the estimated se^2 / sd^2 is chi2(m-2)/(m-2): check it lies in its central 99.98% range
    dof = x.size - 2
    ratio = (fit.slope_se / sd_theory) ** 2
    assert chi2.ppf(1e-4, dof) / dof < ratio < chi2.ppf(1 - 1e-4, dof) / dof
    assert fit.ci_low < fit.slope < fit.ci_high


def test_confidence_interval_coverage():
    rng = np.random.default_rng(2)
    reps, level = 400, 0.95
    x = np.repeat(WIDTHS, 2)
    covered = 0
    for _ in range(reps):
        y = x**-0.5 * np.exp(0.3 * rng.standard_normal(x.size))
        fit = fit_power_law(x, y, level=level)
        covered += fit.ci_low <= -0.5 <= fit.ci_high
    se = math.sqrt(level * (1 - level) / reps)
    assert abs(covered / reps - level) < 4 * se


def test_fit_errors_and_to_dict():
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1, 2], [1.0, 0.0])
    with pytest.raises(ValueError, match="at least 2"):
        fit_power_law([1], [1.0])
    with pytest.raises(ValueError, match="distinct"):
        fit_power_law([2, 2, 2], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="same number"):
        fit_power_law([1, 2, 3], [1.0, 2.0])
    with pytest.raises(ValueError, match="level"):
        fit_power_law([1, 2, 3], [1.0, 2.0, 3.0], level=1.5)
    d = fit_power_law([1, 2], [1.0, 2.0]).to_dict()
    assert d["slope_se"] == "inf"
    import json

    json.dumps(d)
