"""Speed and peak memory of the empirical-NTK algorithms (and of neural-tangents' ones, if present).

Architectures (float32, n inputs, kernel of x with itself):

* MLP 784-512-512-10 (ReLU);
* CNN: Conv 3x3 (32 ch, padding 1) - ReLU - Conv 3x3 (32 ch, padding 1) - ReLU - Flatten - Dense 10,
  on (3, 16, 16) channels-first inputs.

Every case runs in its own subprocess, so ``ru_maxrss`` is that case's peak
resident memory (including the Python/torch baseline, which is reported too).
The ``jacobian`` and ``ntvp`` methods are very slow at n=256 on a CPU; by default
they are measured at two smaller sizes and extrapolated to n with
``t(n) = a·n + b·n²`` (per-example Jacobians ∝ n, contractions ∝ n²), which is
printed with a ``~`` and the sizes used. ``--full-scale`` measures them at n.

If the neural-tangents reference environment exists (``/tmp/nt-ref/bin/python``
or ``--nt-python``), its ``empirical_ntk_fn`` with JACOBIAN_CONTRACTION,
NTK_VECTOR_PRODUCTS and STRUCTURED_DERIVATIVES is timed on the same networks
(stax, same shapes, jitted; compile time reported separately; same
extrapolation for the two slow implementations) and our/their ratios printed.

Usage::

    .venv/bin/python benchmarks/empirical.py            # n=256
    .venv/bin/python benchmarks/empirical.py --quick    # n=64, small extrapolation sizes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ARCHS = ("mlp", "cnn")
OUTPUTS = ("trace", "full")
METHODS = ("structured", "jacobian", "ntvp")
NT_IMPLS = {"jacobian": "JACOBIAN_CONTRACTION", "ntvp": "NTK_VECTOR_PRODUCTS", "structured": "STRUCTURED_DERIVATIVES"}


# ---------------------------------------------------------------------------------------------
# one case, in a subprocess


def _torch_case(arch: str, method: str, output: str, n: int, repeats: int) -> dict:
    import resource

    import torch
    from torch import nn

    import ntkit as nk

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    torch.manual_seed(0)
    if arch == "mlp":
        model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
        x = torch.randn(n, 784)
    else:
        model = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 16 * 16, 10),
        )
        x = torch.randn(n, 3, 16, 16)
    nk.empirical_ntk(model, x[:2], output=output, method=method)  # warm-up (lazy imports, kernels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        K = nk.empirical_ntk(model, x, output=output, method=method)
        times.append(time.perf_counter() - t0)
        if times[-1] > 5:
            break
    assert bool(torch.isfinite(K).all())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"time": min(times), "peak_mb": peak / 1024, "base_mb": base_rss / 1024}


_NT_SCRIPT = r"""
import json, resource, sys, time
import jax, jax.numpy as jnp
import neural_tangents as nt
from neural_tangents import stax
arch, impl, output, n, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
key = jax.random.PRNGKey(0)
if arch == "mlp":
    init, apply, _ = stax.serial(stax.Dense(512, b_std=0.05), stax.Relu(), stax.Dense(512, b_std=0.05), stax.Relu(),
                                 stax.Dense(10, b_std=0.05))
    shape = (n, 784)
else:
    dn = ("NCHW", "OIHW", "NCHW")
    init, apply, _ = stax.serial(stax.Conv(32, (3, 3), padding="SAME", b_std=0.05, dimension_numbers=dn), stax.Relu(),
                                 stax.Conv(32, (3, 3), padding="SAME", b_std=0.05, dimension_numbers=dn), stax.Relu(),
                                 stax.Flatten(), stax.Dense(10, b_std=0.05))
    shape = (n, 3, 16, 16)
x = jax.random.normal(key, shape, dtype=jnp.float32)
_, params = init(key, shape)
fn = jax.jit(nt.empirical_ntk_fn(apply, trace_axes=(-1,) if output == "trace" else (), vmap_axes=0,
                                 implementation=getattr(nt.NtkImplementation, impl)))
t0 = time.perf_counter(); fn(x, None, params).block_until_ready(); first = time.perf_counter() - t0
times = []
for _ in range(repeats):
    t0 = time.perf_counter(); K = fn(x, None, params).block_until_ready(); times.append(time.perf_counter() - t0)
    if times[-1] > 5:
        break
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("RESULT " + json.dumps({"time": min(times), "compile": first - min(times), "peak_mb": peak / 1024,
                               "base_mb": base / 1024, "shape": list(K.shape)}))
"""


_THREADS = {"n": 1}


def _run_sub(cmd: list[str], timeout: float) -> dict | None:
    env = dict(os.environ)
    t = str(_THREADS["n"])
    env.update(OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t)
    if _THREADS["n"] == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f}s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (p.stderr.strip().splitlines() or ["failed"])[-1][:200]}


def ours(arch: str, method: str, output: str, n: int, repeats: int, timeout: float) -> dict | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--case", json.dumps([arch, method, output, n, repeats])]
    return _run_sub(cmd, timeout)


def theirs(nt_python: str, arch: str, method: str, output: str, n: int, repeats: int, timeout: float) -> dict | None:
    cmd = [nt_python, "-c", _NT_SCRIPT, arch, NT_IMPLS[method], output, str(n), str(repeats)]
    return _run_sub(cmd, timeout)


def extrapolate(points: list[tuple[int, float]], n: int) -> float:
    """Fit t = a·n + b·n² (a, b >= 0) through two (n, t) points and evaluate at n."""
    (na, ta), (nb, tb) = points
    b = (tb / nb - ta / na) / (nb - na)
    a = ta / na - b * na
    if b < 0:
        return tb * n / nb
    if a < 0:
        return tb * (n / nb) ** 2
    return a * n + b * n * n


def measure(run, arch, method, output, n, small, full_scale, repeats, timeout):
    """Measured at n (structured, or --full-scale) or extrapolated from two smaller sizes."""
    if method == "structured" or full_scale:
        r = run(arch, method, output, n, repeats, timeout)
        return r, False
    rs = [run(arch, method, output, m, 1, timeout) for m in small]
    if any(r is None or "error" in r for r in rs):
        return next(r for r in rs if r is None or "error" in r), False
    est = dict(rs[-1])
    est["time"] = extrapolate([(m, r["time"]) for m, r in zip(small, rs, strict=True)], n)
    est["measured"] = {m: round(r["time"], 3) for m, r in zip(small, rs, strict=True)}
    return est, True


def _fmt_t(r: dict | None, est: bool) -> str:
    if r is None or "error" in r:
        return "n/a" if r is None else f"error: {r['error']}"
    return ("~" if est else "") + (f"{r['time']:.3g} s")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="n=64 and extrapolation from n=8, 16")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--small", type=str, default=None, help="sizes for extrapolation, e.g. 16,32")
    ap.add_argument("--full-scale", action="store_true", help="measure jacobian/ntvp at n too")
    ap.add_argument("--archs", default="mlp,cnn")
    ap.add_argument("--outputs", default="trace,full")
    ap.add_argument("--nt-python", default="/tmp/nt-ref/bin/python")
    ap.add_argument("--no-nt", action="store_true")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads per case, for both libraries (default 1: fair and robust on a shared machine)")
    ap.add_argument("--json", default=None, help="also write all figures to this file")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        arch, method, output, n, repeats = json.loads(args.case)
        print("RESULT " + json.dumps(_torch_case(arch, method, output, n, repeats)))
        return
    _THREADS["n"] = args.threads
    n = args.n or (64 if args.quick else 256)
    small = [int(s) for s in (args.small or ("8,16" if args.quick else "16,32")).split(",")]
    have_nt = not args.no_nt and os.path.exists(args.nt_python)
    if have_nt:
        ok = subprocess.run([args.nt_python, "-c", "import neural_tangents"], capture_output=True).returncode == 0
        have_nt = ok
    print(f"empirical NTK benchmark: n={n}, float32, {args.threads} thread(s) per case, load average "
          f"{os.getloadavg()[0]:.1f} (timings are noisy on a shared machine)")
    print(f"neural-tangents reference: {'yes (' + args.nt_python + ')' if have_nt else 'not found, skipped'}")
    rows = []
    for arch in args.archs.split(","):
        for output in args.outputs.split(","):
            res = {}
            for method in METHODS:
                r, est = measure(lambda *a: ours(*a), arch, method, output, n, small, args.full_scale,
                                 args.repeats, args.timeout)
                res[("ours", method)] = (r, est)
                if have_nt:
                    r2, est2 = measure(lambda *a: theirs(args.nt_python, *a), arch, method, output, n, small,
                                       args.full_scale, args.repeats, args.timeout)
                    res[("nt", method)] = (r2, est2)
                print(f"  {arch:4s} {output:5s} {method:10s} ours {_fmt_t(r, est):>12s}"
                      + (f"   nt {_fmt_t(*res[('nt', method)]):>12s}" if have_nt else ""), flush=True)
            rows.append((arch, output, res))
    print()
    print("| arch | output | method | ours time | ours peak RSS | NT time | NT compile | NT peak RSS | ours/NT |")
    print("|---|---|---|---|---|---|---|---|---|")
    dump = []

    def ok(r):
        return r is not None and "error" not in r

    def cell_t(r, est):
        t = _fmt_t(r, est)
        if ok(r) and est:
            t += f" (from n={','.join(map(str, r['measured']))})"
        return t

    for arch, output, res in rows:
        for method in METHODS:
            r, est = res[("ours", method)]
            r2, est2 = res.get(("nt", method), (None, False))
            ratio = f"{r['time'] / r2['time']:.2f}" if ok(r) and ok(r2) else "-"
            mem1 = f"{r['peak_mb']:.0f} MB" if ok(r) else "-"
            mem2 = f"{r2['peak_mb']:.0f} MB" if ok(r2) else "-"
            comp = f"{r2['compile']:.2f} s" if ok(r2) else "-"
            t2 = cell_t(r2, est2) if have_nt else "n/a"
            print(f"| {arch} | {output} | {method} | {cell_t(r, est)} | {mem1} | {t2} | {comp} | {mem2} | {ratio} |")
            dump.append({"arch": arch, "output": output, "method": method, "ours": r, "ours_extrapolated": est,
                         "nt": r2, "nt_extrapolated": est2})
    print()
    for arch, output, res in rows:
        s, j = res[("ours", "structured")][0], res[("ours", "jacobian")][0]
        if s and j and "error" not in s and "error" not in j:
            print(f"{arch} {output}: jacobian / structured = {j['time'] / s['time']:.0f}x")
        if have_nt:
            best_ours = min((res[("ours", m)][0]["time"], m) for m in METHODS
                            if res[("ours", m)][0] and "error" not in res[("ours", m)][0])
            theirs_ok = [(res[("nt", m)][0]["time"], m) for m in METHODS
                         if res[("nt", m)][0] and "error" not in res[("nt", m)][0]]
            if theirs_ok:
                best_nt = min(theirs_ok)
                print(f"{arch} {output}: best ours {best_ours[1]} {best_ours[0]:.3g} s vs best NT {best_nt[1]} "
                      f"{best_nt[0]:.3g} s -> ours/theirs {best_ours[0] / best_nt[0]:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dump, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
