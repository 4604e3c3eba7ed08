"""Benchmark: infinite-width NNGP + NTK of a depth-3 ReLU network, ntkit vs neural-tangents.

Architecture (both libraries, NTK parameterisation)::

    Dense(512, W_std=1.5, b_std=0.05), Relu, Dense(512, W_std=1.5, b_std=0.05), Relu,
    Dense(1, W_std=1.5, b_std=0.05)

on ``n`` random 784-dimensional inputs (x2 = x1), ``get=("nngp", "ntk")``, for
``n`` in {1000, 2000, 4000} and float32/float64. Every case runs in its own
subprocess (so ``ru_maxrss`` is that case's peak resident memory); the time
is the best of ``--repeats`` runs after one warm-up run. neural-tangents runs
with ``/tmp/nt-ref/bin/python`` (its ``kernel_fn`` jitted, x64 enabled for
float64); that part is skipped when the environment is missing. The two
libraries' kernels are also compared numerically on the same inputs (n=300).

Usage::

    python benchmarks/infinite_fc.py            # full table
    python benchmarks/infinite_fc.py --quick    # n = 500, 1000 only, 2 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

NT_PYTHON = "/tmp/nt-ref/bin/python"
D = 784

_OURS = r"""
import json, resource, sys, time
import numpy as np
import torch
from ntkit import layers as L

n, dtype, repeats, save, threads = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
if threads:
    torch.set_num_threads(threads)
x = torch.from_numpy(np.random.default_rng(0).standard_normal((n, __D__))).to(getattr(torch, dtype))
arch = L.serial(L.Dense(512, W_std=1.5, b_std=0.05), L.Relu(), L.Dense(512, W_std=1.5, b_std=0.05), L.Relu(),
                L.Dense(1, W_std=1.5, b_std=0.05))
arch.kernel(x, get=("nngp", "ntk"))  # warm-up
best = float("inf")
for _ in range(repeats):
    t = time.perf_counter()
    k = arch.kernel(x, get=("nngp", "ntk"))
    best = min(best, time.perf_counter() - t)
if save != "-":
    np.save(save + "_nngp.npy", k.nngp.numpy()); np.save(save + "_ntk.npy", k.ntk.numpy())
print(json.dumps({"time": best, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "threads": torch.get_num_threads()}))
""".replace("__D__", str(D))

_NT = r"""
import json, resource, sys, time
import numpy as np
n, dtype, repeats, save = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
import jax
if dtype == "float64":
    jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from neural_tangents import stax
x = jnp.asarray(np.random.default_rng(0).standard_normal((n, __D__)).astype(dtype))
_, _, kernel_fn = stax.serial(stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(),
                              stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(),
                              stax.Dense(1, W_std=1.5, b_std=0.05))
kernel_fn = jax.jit(kernel_fn, static_argnames="get")
jax.block_until_ready(kernel_fn(x, None, get=("nngp", "ntk")))  # compile + warm-up
best = float("inf")
for _ in range(repeats):
    t = time.perf_counter()
    k = jax.block_until_ready(kernel_fn(x, None, get=("nngp", "ntk")))
    best = min(best, time.perf_counter() - t)
if save != "-":
    np.save(save + "_nngp.npy", np.asarray(k.nngp)); np.save(save + "_ntk.npy", np.asarray(k.ntk))
print(json.dumps({"time": best, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""".replace("__D__", str(D))


def _run(python: str, script: str, n: int, dtype: str, repeats: int, save: str = "-", threads: int = 0
         ) -> dict | None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    if threads and python == NT_PYTHON:
        env["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} " \
                           f"intra_op_parallelism_threads={threads}"
    proc = subprocess.run([python, "-c", script, str(n), dtype, str(repeats), save, str(threads)],
                          capture_output=True,
                          text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        print(f"  [{python} n={n} {dtype}] failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _nt_available() -> bool:
    if not os.path.exists(NT_PYTHON):
        return False
    proc = subprocess.run([NT_PYTHON, "-c", "import neural_tangents"], capture_output=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu"))
    return proc.returncode == 0


def _agreement(have_nt: bool) -> None:
    if not have_nt:
        return
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float64", "float32"):
            a, b = os.path.join(tmp, "ours_" + dtype), os.path.join(tmp, "nt_" + dtype)
            if _run(sys.executable, _OURS, 300, dtype, 1, a) is None or _run(NT_PYTHON, _NT, 300, dtype, 1, b) is None:
                continue
            for name in ("nngp", "ntk"):
                x, y = np.load(f"{a}_{name}.npy"), np.load(f"{b}_{name}.npy")
                rel = float(np.abs(x - y).max() / np.abs(y).max())
                print(f"agreement with neural-tangents, n=300 {dtype} {name}: max |diff| / max |K| = {rel:.2e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="n in {500, 1000}, 2 repeats")
    p.add_argument("--no-check", action="store_true", help="skip the numerical comparison at n=300")
    p.add_argument("--sizes", type=int, nargs="*", default=None)
    p.add_argument("--dtypes", nargs="*", default=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--no-nt", action="store_true", help="skip neural-tangents")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads for both libraries (0: each library's default)")
    args = p.parse_args()
    sizes = args.sizes or ([500, 1000] if args.quick else [1000, 2000, 4000])
    repeats = args.repeats or (2 if args.quick else 3)
    have_nt = not args.no_nt and _nt_available()
    if not have_nt and not args.no_nt:
        print(f"neural-tangents reference env not found at {NT_PYTHON}: skipping the comparison")
    print(f"load average at start: {os.getloadavg()[0]:.1f}; cpu count {os.cpu_count()}; "
          f"threads {args.threads or 'default'}")
    t0 = time.time()
    if not args.no_check:
        _agreement(have_nt)
    rows = []
    for dtype in args.dtypes:
        for n in sizes:
            ours = _run(sys.executable, _OURS, n, dtype, repeats, threads=args.threads)
            nt = _run(NT_PYTHON, _NT, n, dtype, repeats, threads=args.threads) if have_nt else None
            rows.append((n, dtype, ours, nt))
            o = f"{ours['time']:.3f} s {ours['maxrss_mb']:.0f} MB" if ours else "failed"
            t = f"{nt['time']:.3f} s {nt['maxrss_mb']:.0f} MB" if nt else "-"
            r = f"{ours['time'] / nt['time']:.2f}" if ours and nt else "-"
            print(f"n={n:5d} {dtype}: ntkit {o} | neural-tangents {t} | ratio {r}", flush=True)
    print("\n| n | dtype | ntkit time (s) | ntkit peak RSS (MB) | neural-tangents time (s) | NT peak RSS (MB) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for n, dtype, ours, nt in rows:
        cells = [str(n), dtype,
                 f"{ours['time']:.3f}" if ours else "-", f"{ours['maxrss_mb']:.0f}" if ours else "-",
                 f"{nt['time']:.3f}" if nt else "-", f"{nt['maxrss_mb']:.0f}" if nt else "-",
                 f"{ours['time'] / nt['time']:.2f}" if ours and nt else "-"]
        print("| " + " | ".join(cells) + " |")
    print(f"\n(total wall time {time.time() - t0:.0f} s; load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
