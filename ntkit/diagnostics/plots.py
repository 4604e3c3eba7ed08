"""Matplotlib figures for every diagnostic (one function per measurement).

matplotlib is imported lazily (install the ``plot`` extra); figures are built
with :class:`matplotlib.figure.Figure` directly, so no GUI backend or global
pyplot state is touched. Each function returns the ``Figure``; save it with
``fig.savefig(path)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "plot_kernel_convergence",
    "plot_lazy_training",
    "plot_lazy_scaling",
    "plot_kappa_scaling",
    "plot_linearization",
    "plot_min_norm",
    "plot_spectral_bias",
    "plot_spectrum",
    "plot_alpha_scaling",
    "plot_parameterization_comparison",
    "plot_generalization_bounds",
]


def _figure(ncols: int = 1, width: float = 5.0, height: float = 3.6) -> tuple[Any, list[Any]]:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'ntkit[plot]'") from exc
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _scaling_panel(ax: Any, widths: list[int], values: np.ndarray, fit: Any, label: str, color: Any = None) -> None:
    w = np.asarray(widths, dtype=float)
    vals = np.asarray(values, dtype=float)
    line = ax.plot(np.repeat(w, vals.shape[1]), vals.ravel(), "o", alpha=0.5, color=color, ms=4)[0]
    ax.plot(w, vals.mean(1), "-", color=line.get_color(), label=f"{label}: slope {fit.slope:+.2f} ± {fit.slope_se:.2f}")
    ax.plot(w, fit.predict(w), ":", color=line.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")


def plot_kernel_convergence(result: Any) -> Any:
    """Distance to the infinite-width kernel against width (:class:`KernelConvergence`)."""
    fig, (ax,) = _figure()
    _scaling_panel(ax, result.widths, result.distance, result.fit, result.kernel.upper())
    w = np.asarray(result.widths, dtype=float)
    ax.plot(w, result.distance.mean(1)[0] * (w / w[0]) ** -0.5, "k--", lw=0.8, label="width$^{-1/2}$")
    ax.set_xlabel("width")
    ax.set_ylabel(r"$\|K_{emp}-K_\infty\|_F/\|K_\infty\|_F$")
    ax.legend()
    return fig


def plot_lazy_training(trace: Any) -> Any:
    """Loss, kernel change and per-layer weight change along one run (:class:`LazyTrainingTrace`)."""
    fig, (a0, a1) = _figure(2)
    a0.plot(trace.steps, trace.loss)
    a0.set_yscale("log")
    a0.set_xlabel("step")
    a0.set_ylabel("training loss")
    for name, v in trace.weight_change.items():
        a1.plot(trace.steps, v, label=f"weights {name}")
    a1.plot(trace.kernel_steps, trace.kernel_change, "ko-", label="NTK")
    a1.set_xlabel("step")
    a1.set_ylabel("relative change")
    a1.legend()
    return fig


def plot_lazy_scaling(result: Any) -> Any:
    """Final kernel and per-layer weight change against width (:class:`LazyScaling`)."""
    fig, (ax,) = _figure(width=6)
    _scaling_panel(ax, result.widths, result.kernel_change, result.kernel_fit, "NTK", color="k")
    for name, v in result.weight_change.items():
        _scaling_panel(ax, result.widths, v, result.weight_fits[name], f"weights {name}")
    ax.set_xlabel("width")
    ax.set_ylabel("relative change after training")
    ax.legend(fontsize="small")
    return fig


def plot_kappa_scaling(result: Any) -> Any:
    """κ and the Hessian norm at initialisation against width (:class:`KappaScaling`)."""
    fig, (ax,) = _figure()
    _scaling_panel(ax, result.widths, result.kappa, result.kappa_fit, r"$\kappa$")
    _scaling_panel(ax, result.widths, result.hessian_norm, result.hessian_fit, r"$\|\nabla^2 f\|$")
    ax.set_xlabel("width")
    ax.legend()
    return fig


def plot_linearization(traces: Any, labels: list[str] | None = None) -> Any:
    """``|f − f_lin|`` against ``||θ − θ₀||²`` for one or several :class:`LinearizationTrace`."""
    if not isinstance(traces, list | tuple):
        traces = [traces]
    labels = labels or [f"run {i}" for i in range(len(traces))]
    fig, (ax,) = _figure()
    for tr, lab in zip(traces, labels, strict=True):
        d = np.asarray(tr.param_distance_sq[1:])
        e = np.asarray(tr.max_error[1:])
        ok = (d > 0) & (e > 0)
        ax.plot(d[ok], e[ok], "o-", ms=3, label=lab)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"$\|\theta_t-\theta_0\|^2$")
    ax.set_ylabel(r"$\max_x |f - f_{lin}|$")
    ax.legend()
    return fig


def plot_min_norm(solutions: list[Any], xs: list[float], xlabel: str = "width") -> Any:
    """``||Δθ||`` and the seed's bound ``||r|| / σ_min`` against a swept quantity."""
    fig, (ax,) = _figure()
    ax.plot(xs, [s.norm for s in solutions], "o-", label=r"$\|\Phi^+ r\|$")
    ax.plot(xs, [s.bound for s in solutions], "s--", label=r"$\|r\|/\sigma_{min}(\Phi)$")
    ax.plot(xs, [s.sqrt_n_over_sigma for s in solutions], "^:", label=r"$\sqrt{n}/\sigma_{min}(\Phi)$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.legend()
    return fig


def plot_spectrum(spectrum: Any) -> Any:
    """Eigenvalues of a kernel matrix, decreasing (:class:`KernelSpectrum`)."""
    fig, (ax,) = _figure()
    ev = spectrum.eigenvalues.numpy()
    ax.plot(np.arange(1, ev.size + 1), np.clip(ev, 1e-300, None), ".-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("index $i$")
    ax.set_ylabel(r"$\lambda_i$")
    return fig


def plot_spectral_bias(result: Any, directions: list[int] | None = None) -> Any:
    """Observed (markers) vs predicted (lines) residual projections per eigen-direction (:class:`SpectralBias`)."""
    fig, (ax,) = _figure(width=6)
    n = result.eigenvalues.numel()
    directions = directions or sorted({0, 1, 2, min(9, n - 1), n // 2, n - 1})
    obs = result.observed.norm(dim=-1).numpy()
    pred = result.predicted.norm(dim=-1).numpy()
    for i in directions:
        if obs[0, i] == 0:
            continue
        line = ax.plot(result.steps, pred[:, i] / obs[0, i], "-", label=rf"$\lambda_{{{i + 1}}}$={result.eigenvalues[i]:.3g}")[0]
        ax.plot(result.steps, obs[:, i] / obs[0, i], "o", ms=3, color=line.get_color())
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(r"$|v_i^\top r_t| / |v_i^\top r_0|$")
    ax.legend(fontsize="small")
    return fig


def plot_alpha_scaling(result: Any) -> Any:
    """Kernel/weight change and test error against α (:class:`AlphaScaling`)."""
    fig, (a0, a1) = _figure(2)
    a0.plot(result.alphas, result.kernel_change, "o-", label="NTK change")
    a0.plot(result.alphas, result.weight_change, "s-", label="weight change")
    a0.set_xscale("log")
    a0.set_yscale("log")
    a0.set_xlabel(r"$\alpha$")
    a0.legend()
    a1.plot(result.alphas, result.train_loss, "o-", label="train loss")
    if result.test_mse:
        a1.plot(result.alphas, result.test_mse, "s-", label="test MSE")
        a1.plot(result.alphas, result.test_error, "^-", label="test error")
    a1.set_xscale("log")
    a1.set_xlabel(r"$\alpha$")
    a1.legend()
    return fig


def plot_parameterization_comparison(result: Any) -> Any:
    """Kernel change and test error against width per architecture (:class:`ParameterizationComparison`)."""
    fig, (a0, a1) = _figure(2)
    for name, r in result.results.items():
        _scaling_panel(a0, r.widths, r.kernel_change, r.kernel_fit, name)
        if r.test_error is not None:
            a1.errorbar(r.widths, r.test_error.mean(1), yerr=r.test_error.std(1), fmt="o-", label=name, capsize=3)
    a0.set_xlabel("width")
    a0.set_ylabel("relative NTK change")
    a0.legend()
    a1.set_xscale("log")
    a1.set_xlabel("width")
    a1.set_ylabel("test error")
    a1.legend()
    return fig


def plot_generalization_bounds(labels: list[str], bounds: list[Any]) -> Any:
    """Bar chart of :class:`GeneralizationBound` values (e.g. true vs random labels)."""
    fig, (ax,) = _figure()
    ax.bar(labels, [b.bound for b in bounds])
    ax.set_ylabel(r"$\sqrt{2 y^\top H^{-1} y / n}$")
    return fig
