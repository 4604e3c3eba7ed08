"""Scaling benchmark: Fashion-MNIST FC ReLU NTK kernels sharded over 1 and 2 ranks, and CG solves.

For each size n and rank count R it launches ``torchrun`` (gloo, loopback
only) with R workers; each worker computes its row blocks of the depth-2
ReLU NTK (784-dim inputs, ``arch.kernel`` per 2048x2048 tile, float32) into
an on-disk store with :func:`ntkit.distributed.kernel` (``durable=False``: no fsync per tile), then (for the sizes
in ``--cg-sizes``) solves ``(K + λI) α = Y`` for the 10 one-hot class columns
with :func:`ntkit.distributed.cg_solve` to 1e-6 relative residual (float64
recurrences, pivoted-Cholesky preconditioner). Each worker reports its own
wall time and peak RSS (``ru_maxrss``: the matrix lives in the file and the
OS page cache, which RSS does not count).

Usage::

    python benchmarks/scale.py --quick                      # n = 2000, 3000: ~1-2 minutes
    python benchmarks/scale.py --sizes 20000 30000 40000 --ranks 1 2 --cg-sizes 20000

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package
(``apt-get install -y dataset-fashion-mnist``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _arch():
    from ntkit import layers as L

    w, b = math.sqrt(2.0), 0.1
    return L.serial(L.Dense(512, W_std=w, b_std=b), L.Relu(), L.Dense(512, W_std=w, b_std=b), L.Relu(),
                    L.Dense(1, W_std=w, b_std=b))


def _load(n: int):
    import numpy as np

    from ntkit.data.fashion_mnist import load_fashion_mnist

    x, y = load_fashion_mnist("train")
    if n > len(x):
        raise SystemExit(f"n={n} exceeds the 60000 training images")
    return x[:n].astype(np.float32), y[:n]


def worker(a: argparse.Namespace) -> None:
    import torch

    from ntkit import distributed as D

    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=1800))
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    try:
        x, y = _load(a.n)
        t0 = time.perf_counter()
        st = D.kernel(_arch(), x, store=a.store, get="ntk", batch_size=a.tile, dtype=torch.float32,
                      durable=False)
        out = {"rank": rank, "world": world, "n": a.n, "kernel_s": time.perf_counter() - t0,
               "tiles": st.stats["tiles_computed"], "rss_kernel_mb": _rss_mb()}
        if a.cg:
            diag = st.diagonal("ntk").astype("float64")
            lam = a.ridge * float(diag.mean())
            Y = torch.nn.functional.one_hot(torch.from_numpy(y).long(), 10).double() - 0.1
            t1 = time.perf_counter()
            res = D.cg_solve(st, Y, ridge=lam, preconditioner="pivoted_cholesky", rank=a.prec_rank,
                             tol=1e-6, maxiter=2000, memory_budget="256MB")
            out.update(cg_s=time.perf_counter() - t1, cg_iterations=res.iterations, cg_converged=res.converged,
                       cg_rel_residual=res.relative_residual, ridge=lam, prec_rank=res.preconditioner_rank,
                       rss_cg_mb=_rss_mb())
        with open(os.path.join(a.out, f"rank{rank}.json"), "w") as fh:
            json.dump(out, fh)
    finally:
        torch.distributed.destroy_process_group()


def approx_accuracy(n: int, n_test: int = 1000) -> None:
    """Nyström / random features vs the exact kernel ridge solve on n Fashion-MNIST points (in-process)."""
    import torch

    from ntkit import distributed as D
    from ntkit.data.fashion_mnist import load_fashion_mnist

    x, y = load_fashion_mnist("train")
    xt, yt = load_fashion_mnist("test")
    x, y = torch.from_numpy(x[:n]).double(), torch.from_numpy(y[:n]).long()
    xt, yt = torch.from_numpy(xt[:n_test]).double(), torch.from_numpy(yt[:n_test]).long()
    arch = _arch()
    Y = torch.nn.functional.one_hot(y, 10).double() - 0.1
    t0 = time.perf_counter()
    K = arch.kernel(x, get="ntk", batch_size=2048).ntk
    Kt = arch.kernel(xt, x, get="ntk", batch_size=2048).ntk
    lam = 1e-2 * float(torch.diagonal(K).mean())
    pred = Kt @ torch.linalg.solve(K + lam * torch.eye(n, dtype=K.dtype), Y)
    t_exact = time.perf_counter() - t0
    acc = float((pred.argmax(1) == yt).float().mean())
    print(f"\napproximations vs the exact solve, n={n} train, {n_test} test, depth-2 ReLU NTK, "
          f"λ = 1e-2·mean(diag K)")
    print(f"{'method':>22} {'rank':>6} {'rel. pred. error':>16} {'test acc':>9} {'seconds':>8}")
    print(f"{'exact (dense solve)':>22} {n:>6} {0.0:>16.2e} {acc:>9.3f} {t_exact:>8.1f}")

    def report(name: str, approx, seconds: float) -> None:
        p = approx.predict(xt, Y, lam)
        err = float(torch.linalg.norm(p - pred) / torch.linalg.norm(pred))
        a = float((p.argmax(1) == yt).float().mean())
        print(f"{name:>22} {approx.rank:>6} {err:>16.2e} {a:>9.3f} {seconds:>8.1f}", flush=True)

    for r in (250, 500, 1000, 2000):
        if r < n:
            t0 = time.perf_counter()
            ny = D.nystrom(arch, x, r, seed=0)
            report("Nyström", ny, time.perf_counter() - t0)
    for m in (512, 2048):
        t0 = time.perf_counter()
        rf = D.relu_random_features(x, m, depth=2, W_std=math.sqrt(2.0), b_std=0.1, seed=0, dtype=torch.float32)
        report("ReLU random features", rf, time.perf_counter() - t0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(n: int, ranks: int, cg: bool, a: argparse.Namespace) -> list[dict]:
    store = os.path.join(a.store_dir, f"n{n}_r{ranks}")
    outdir = store + "_out"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(outdir, ignore_errors=True)
    os.makedirs(outdir)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}", "--nnodes=1",
           "--master-addr=127.0.0.1", f"--master-port={_free_port()}", "--max-restarts=0", HERE, "--worker",
           "--size", str(n), "--store", store, "--out", outdir, "--tile", str(a.tile), "--ridge", str(a.ridge),
           "--prec-rank", str(a.prec_rank)] + (["--cg"] if cg else [])
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS=str(max(1, a.threads // ranks)))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        log, _ = proc.communicate(timeout=a.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        print(f"n={n} ranks={ranks}: timed out after {a.timeout}s", flush=True)
        return []
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(log[-3000:])
        raise SystemExit(f"n={n} ranks={ranks} failed")
    rows = []
    for r in range(ranks):
        with open(os.path.join(outdir, f"rank{r}.json")) as fh:
            rows.append(json.load(fh) | {"launch_wall_s": wall})
    if not a.keep:
        shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(outdir, ignore_errors=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="n = 2000, 3000 (CG on both)")
    p.add_argument("--sizes", type=int, nargs="+", default=[20000])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cg-sizes", type=int, nargs="*", default=None, help="sizes with a CG solve (default: all)")
    p.add_argument("--cg-ranks", type=int, default=None, help="rank count whose run does the CG (default: max)")
    p.add_argument("--store-dir", default="/tmp/ntkit-scale")
    p.add_argument("--tile", type=int, default=2048)
    p.add_argument("--ridge", type=float, default=1e-2, help="λ as a fraction of mean(diag K)")
    p.add_argument("--prec-rank", type=int, default=500)
    p.add_argument("--threads", type=int, default=2, help="threads shared by the ranks of one run")
    p.add_argument("--timeout", type=float, default=3000)
    p.add_argument("--keep", action="store_true", help="keep the stores")
    p.add_argument("--approx", type=int, default=0, metavar="N",
                   help="also compare Nyström / random features with the exact solve on N points")
    p.add_argument("--json", default=None, help="append results to this JSON-lines file")
    # worker mode (launched by torchrun)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", dest="n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--cg", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a)
        return
    if a.quick:
        a.sizes = [2000, 3000]
        a.tile = min(a.tile, 1000)
        a.approx = a.approx or 1500
        a.prec_rank = min(a.prec_rank, 200)
    cg_sizes = set(a.sizes if a.cg_sizes is None else a.cg_sizes)
    cg_ranks = max(a.ranks) if a.cg_ranks is None else a.cg_ranks
    os.makedirs(a.store_dir, exist_ok=True)
    print(f"store dir {a.store_dir}: {shutil.disk_usage(a.store_dir).free / 1e9:.0f} GB free; "
          f"{os.cpu_count()} CPUs (shared with other jobs: timings are noisy)", flush=True)
    hdr = (f"{'n':>6} {'ranks':>5} {'kernel s':>9} {'speedup':>7} {'tiles/rank':>11} {'peak RSS MB/rank':>17} "
           f"{'CG it':>6} {'CG s':>7} {'rel res':>8}")
    print(hdr, flush=True)
    results = []
    for n in a.sizes:
        base = None
        for R in a.ranks:
            rows = run_case(n, R, cg=(n in cg_sizes and R == cg_ranks), a=a)
            if not rows:
                continue
            ks = max(r["kernel_s"] for r in rows)
            base = ks if R == min(a.ranks) else base
            speed = f"{base / ks:.2f}x" if base else "-"
            rss = "/".join(f"{max(r['rss_kernel_mb'], r.get('rss_cg_mb', 0)):.0f}" for r in rows)
            tiles = "/".join(str(r["tiles"]) for r in rows)
            r0 = rows[0]
            cg = (f"{r0['cg_iterations']:>6} {r0['cg_s']:>7.1f} {r0['cg_rel_residual']:>8.1e}" if "cg_s" in r0
                  else f"{'-':>6} {'-':>7} {'-':>8}")
            print(f"{n:>6} {R:>5} {ks:>9.1f} {speed:>7} {tiles:>11} {rss:>17} {cg}", flush=True)
            results.append({"n": n, "ranks": R, "per_rank": rows})
            if a.json:
                with open(a.json, "a") as fh:
                    fh.write(json.dumps(results[-1]) + "\n")
    if a.approx:
        approx_accuracy(a.approx)
    if results:
        big = max(results, key=lambda r: (r["n"], r["ranks"]))
        ks = max(r["kernel_s"] for r in big["per_rank"])
        print(f"\nextrapolation (kernel time ∝ n², from n={big['n']}, {big['ranks']} rank(s), {ks:.0f}s):")
        for n in (40000, 60000):
            if n > big["n"]:
                print(f"  n={n}: ~{ks * (n / big['n']) ** 2 / 60:.0f} min, store {n * n * 4 / 1e9:.1f} GB float32")


if __name__ == "__main__":
    main()
