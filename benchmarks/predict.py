"""Benchmark ntkit.predict.gradient_descent_mse against a plain numpy/scipy baseline (and neural-tangents).

For each training-set size n and dtype, four cases are timed, each in its own
subprocess so that its peak resident memory (ru_maxrss) is its own:

* ``inf``: t -> infinity predictions on m test points (Cholesky + solve);
* ``finite``: predictions at 10 times (eigendecomposition + matrix products);

by ``ntkit`` (torch) and by ``numpy`` (scipy.linalg.cho_factor/cho_solve and
numpy.linalg.eigh, the same formulas written directly). If the neural-tangents
reference environment exists (``/tmp/nt-ref/bin/python``), its
``nt.predict.gradient_descent_mse`` is timed too (JAX on CPU; skipped otherwise).

The kernel is the infinite-width NTK of a one-hidden-layer ReLU network on
random unit-norm inputs (arc-cosine closed form, computed in numpy), with a
relative ridge ``diag_reg = 1e-4`` so float32 Cholesky stays possible. Every
case prints a checksum of its test predictions; the table reports the
relative difference to the float64 numpy baseline.

Usage::

    python benchmarks/predict.py            # n in {2000, 4000, 8000}, float32 and float64
    python benchmarks/predict.py --quick    # n in {500, 1000}
    python benchmarks/predict.py --sizes 2000 --dtypes float64 --no-nt
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

M_TEST = 1000
K_OUT = 10
N_TIMES = 10
DIAG_REG = 1e-4
LR = 1.0
NT_PYTHON = "/tmp/nt-ref/bin/python"


def make_problem(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Kernel (n, n), test kernel (m, n), targets (n, k), times (float64 numpy)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n + M_TEST, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cos = np.clip(x @ x[:n].T, -1.0, 1.0)
    th = np.arccos(cos)
    nngp = (np.sin(th) + (np.pi - th) * cos) / (2 * np.pi)
    ntk = nngp + cos * (np.pi - th) / (2 * np.pi)
    y = rng.standard_normal((n, K_OUT))
    times = np.geomspace(1.0, 1e4, N_TIMES)
    return ntk[:n], ntk[n:], y, times


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_case(impl: str, dtype: str, n: int, mode: str) -> dict:
    k, kts, y, times = make_problem(n)
    np_dt = np.float32 if dtype == "float32" else np.float64
    k, kts, y = k.astype(np_dt), kts.astype(np_dt), y.astype(np_dt)
    rho = DIAG_REG * float(np.mean(np.diag(k)))
    base_mb = _peak_mb()
    if impl == "ntkit":
        import torch

        from ntkit.predict import gradient_descent_mse

        tdt = torch.float32 if dtype == "float32" else torch.float64
        kt, ktst, yt = torch.from_numpy(k), torch.from_numpy(kts), torch.from_numpy(y)
        t0 = time.perf_counter()
        p = gradient_descent_mse(kt, yt, learning_rate=LR, diag_reg=DIAG_REG, dtype=tdt)
        out = p(None if mode == "inf" else torch.from_numpy(times), 0.0, None, ktst).test
        elapsed = time.perf_counter() - t0
        pred = out.double().numpy()
    elif impl == "numpy":
        import scipy.linalg

        t0 = time.perf_counter()
        a = k + rho * np.eye(n, dtype=np_dt)
        if mode == "inf":
            c = scipy.linalg.cho_factor(a, lower=True, overwrite_a=True, check_finite=False)
            pred = kts @ scipy.linalg.cho_solve(c, y, check_finite=False)
        else:
            lam, v = np.linalg.eigh(k)
            lam = np.clip(lam, 0, None)
            mu = lam + rho
            vy = v.T @ y
            c = LR * times[:, None] / n
            phi = -np.expm1(-c * mu[None]) / mu[None]  # mu > 0 thanks to the ridge
            alpha = np.einsum("ij,tj,jk->tik", v, phi.astype(np_dt), vy)
            pred = kts[None] @ alpha
        elapsed = time.perf_counter() - t0
        pred = np.asarray(pred, dtype=np.float64)
    else:
        raise ValueError(impl)
    return {"impl": impl, "dtype": dtype, "n": n, "mode": mode, "seconds": elapsed,
            "peak_mb": _peak_mb(), "data_mb": base_mb, "checksum": _checksum(pred)}


def _checksum(pred: np.ndarray) -> list[float]:
    flat = pred.reshape(-1)
    return [float(np.sum(np.abs(flat))), float(flat[:: max(1, flat.size // 997)].sum())]


NT_SNIPPET = r"""
import json, sys, time, resource
import numpy as np
sys.path.insert(0, {bench_dir!r})
dtype, n, mode = {dtype!r}, {n}, {mode!r}
import jax
if dtype == "float64":
    jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import neural_tangents as nt
from predict import make_problem, DIAG_REG, LR, K_OUT, _checksum
k, kts, y, times = make_problem(n)
dt = np.float32 if dtype == "float32" else np.float64
k, kts, y = jnp.asarray(k.astype(dt)), jnp.asarray(kts.astype(dt)), jnp.asarray(y.astype(dt))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
# neural-tangents normalises the loss by y.size = n * k: its learning rate is ours times k
fn = nt.predict.gradient_descent_mse(k, y, learning_rate=LR * K_OUT, diag_reg=DIAG_REG)
out = fn(None if mode == "inf" else jnp.asarray(times.astype(dt)), 0.0, 0.0, kts)
out = out[1] if isinstance(out, tuple) else out
out = np.asarray(jax.block_until_ready(out), dtype=np.float64)
el = time.perf_counter() - t0
print(json.dumps(dict(impl="neural-tangents", dtype=dtype, n=n, mode=mode, seconds=el,
      peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, data_mb=base, checksum=_checksum(out))))
"""


def spawn(impl: str, dtype: str, n: int, mode: str) -> dict | None:
    here = os.path.dirname(os.path.abspath(__file__))
    if impl == "neural-tangents":
        if not os.path.exists(NT_PYTHON):
            return None
        cmd = [NT_PYTHON, "-c", NT_SNIPPET.format(bench_dir=here, dtype=dtype, n=n, mode=mode)]
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--case", impl, dtype, str(n), mode]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"  [{impl} {dtype} n={n} {mode}] failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (500, 1000)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    ap.add_argument("--modes", nargs="+", default=["inf", "finite"], choices=["inf", "finite"])
    ap.add_argument("--no-nt", action="store_true", help="skip neural-tangents even if installed")
    ap.add_argument("--case", nargs=4, metavar=("IMPL", "DTYPE", "N", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        impl, dtype, n, mode = args.case
        print(json.dumps(run_case(impl, dtype, int(n), mode)))
        return
    sizes = args.sizes or ([500, 1000] if args.quick else [2000, 4000, 8000])
    impls = ["ntkit", "numpy"] + ([] if args.no_nt else ["neural-tangents"])
    if not args.no_nt and not os.path.exists(NT_PYTHON):
        print(f"(neural-tangents env {NT_PYTHON} missing: skipping that column)")
    print(f"gradient_descent_mse: m_test={M_TEST}, k={K_OUT} outputs, {N_TIMES} times for 'finite'; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    hdr = (f"{'n':>6} {'dtype':>8} {'mode':>7} | {'ntkit s':>9} {'numpy s':>9} {'ratio':>6} | "
           f"{'NT s':>8} {'ratio':>6} | {'ntkit MB':>9} {'numpy MB':>9} {'NT MB':>8} | "
           f"{'rel.diff ntkit':>14} {'rel.diff NT':>11}")
    print(hdr)
    print("-" * len(hdr))
    for n in sizes:
        ref64: dict[str, float] = {}
        for mode in args.modes:
            ref = spawn("numpy", "float64", n, mode)
            ref64[mode] = ref["checksum"][0] if ref else float("nan")
        for dtype in args.dtypes:
            for mode in args.modes:
                res = {impl: spawn(impl, dtype, n, mode) for impl in impls}

                def g(impl: str, key: str, res: dict = res) -> float:
                    r = res.get(impl)
                    return float("nan") if r is None else r[key]

                def rel(impl: str, res: dict = res, ref: float = ref64[mode]) -> float:
                    return abs(res[impl]["checksum"][0] - ref) / ref if res.get(impl) else float("nan")

                ts, tn, tnt = g("ntkit", "seconds"), g("numpy", "seconds"), g("neural-tangents", "seconds")
                print(f"{n:>6} {dtype:>8} {mode:>7} | {ts:>9.3f} {tn:>9.3f} {ts / tn:>6.2f} | {tnt:>8.3f} "
                      f"{ts / tnt:>6.2f} | {g('ntkit', 'peak_mb'):>9.0f} {g('numpy', 'peak_mb'):>9.0f} "
                      f"{g('neural-tangents', 'peak_mb'):>8.0f} | {rel('ntkit'):>14.2e} "
                      f"{rel('neural-tangents'):>11.2e}", flush=True)
    print("ratio = ntkit time / other time (< 1: ntkit faster). MB = peak RSS of the case's process "
          "(includes building the kernel in numpy float64). rel.diff = relative difference of the sum of "
          "|test predictions| to the float64 numpy baseline.")


if __name__ == "__main__":
    main()
