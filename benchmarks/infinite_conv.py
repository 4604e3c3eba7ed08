"""Infinite-width CNN kernels: time and peak memory, ntkit vs neural-tangents.

Cases (each in its own subprocess, so peak RSS is the case's own ``ru_maxrss``):

* ``cnn``: Conv(64,(3,3),SAME)-Relu-Conv(64,(3,3),SAME)-Relu-{Flatten | GlobalAvgPool}-Dense(1)
  on 16x16x3 images (ntkit: ``(n, 3, 16, 16)``; neural-tangents: NHWC ``(n, 16, 16, 3)``), NTK only;
* ``deep``: the 21-layer CNN of the neural-tangents README, [Conv(1,(3,3),SAME), Relu] x 21 then
  {GlobalAvgPool | Flatten} then Dense(1) on 32x32x3 images: milliseconds per NTK entry.

With ``--with-nt`` the same kernels are computed by neural-tangents in its reference environment
(``/tmp/nt-ref/bin/python``, skipped cleanly when missing; its GAP case is skipped above
``--nt-gap-max-n`` because it needs many GB), and the two NTKs are compared entrywise.

Usage::

    python benchmarks/infinite_conv.py --quick            # a minute or two
    python benchmarks/infinite_conv.py --with-nt          # full grid + neural-tangents
    python benchmarks/infinite_conv.py --deep --with-nt   # also the 21-layer README CNN

Protocol: each library is timed as the best of ``--repeat`` calls after an untimed warm-up.
neural-tangents' ``kernel_fn`` is ``jax.jit``-ed, as its docs recommend, and warmed up on the same
inputs (compilation excluded); ``--nt-no-jit-gap`` runs its GAP cases un-jitted (warmed up on two
inputs, timed once), the protocol of our first measurements. ntkit is warmed up on the same inputs
for Flatten and on two inputs for GAP. Timings on a shared machine are noisy: ``--repeat`` helps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

NT_PYTHON = "/tmp/nt-ref/bin/python"

_OURS_WORKER = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    import torch
    from ntkit import layers as L
    arch_name, head, n, dtype, budget, out_path, threads, repeat = sys.argv[1:9]
    n = int(n)
    if int(threads) > 0:
        torch.set_num_threads(int(threads))
    dt = getattr(torch, dtype)
    if arch_name == "cnn":
        body = [L.Conv(64, (3, 3), padding="SAME"), L.Relu(), L.Conv(64, (3, 3), padding="SAME"), L.Relu()]
        side = 16
    else:
        body = []
        for _ in range(21):
            body += [L.Conv(1, (3, 3), padding="SAME"), L.Relu()]
        side = 32
    arch = L.serial(*body, L.GlobalAvgPool() if head == "gap" else L.Flatten(), L.Dense(1))
    x = np.random.RandomState(0).randn(n, side, side, 3)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(dt)  # NHWC -> NCHW
    budget = None if budget == "none" else budget
    cheap = head == "flatten"
    arch.kernel(xt if cheap else xt[:2], get="ntk", memory_budget=budget)  # warm-up, not timed
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    elapsed = float("inf")
    for _ in range(int(repeat)):
        t = time.perf_counter()
        k = arch.kernel(xt, get="ntk", memory_budget=budget)
        elapsed = min(elapsed, time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if out_path != "-":
        np.save(out_path, k.ntk.double().numpy())
    print(json.dumps({"time": elapsed, "peak_gb": peak / 2**20, "base_gb": base / 2**20,
                      "threads": torch.get_num_threads()}))
""")

_NT_WORKER = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    arch_name, head, n, dtype, out_path, repeat, jit_gap = sys.argv[1:8]
    n = int(n)
    if dtype == "float64":
        from jax import config
        config.update("jax_enable_x64", True)
    from neural_tangents import stax
    if arch_name == "cnn":
        body = [stax.Conv(64, (3, 3), padding="SAME"), stax.Relu(), stax.Conv(64, (3, 3), padding="SAME"),
                stax.Relu()]
        side = 16
    else:
        body = []
        for _ in range(21):
            body += [stax.Conv(1, (3, 3), padding="SAME"), stax.Relu()]
        side = 32
    _, _, kernel_fn = stax.serial(*body, stax.GlobalAvgPool() if head == "gap" else stax.Flatten(), stax.Dense(1))
    x = np.random.RandomState(0).randn(n, side, side, 3).astype(dtype)
    jit = head == "flatten" or jit_gap == "1"
    if jit:  # jit as the neural-tangents docs recommend; compile on the same shape, untimed
        import jax
        kernel_fn = jax.jit(kernel_fn, static_argnames="get")
    kernel_fn(x if jit else x[:2], None, "ntk").block_until_ready()  # warm-up, not timed
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    elapsed = float("inf")
    for _ in range(int(repeat) if jit else 1):
        t = time.perf_counter()
        k = kernel_fn(x, None, "ntk")
        k = np.asarray(k.block_until_ready())
        elapsed = min(elapsed, time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if out_path != "-":
        np.save(out_path, k.astype(np.float64))
    print(json.dumps({"time": elapsed, "peak_gb": peak / 2**20, "base_gb": base / 2**20}))
""")


def _run(cmd: list[str], timeout: float) -> dict:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {proc.returncode}: {tail[0][:120]}"}
    return json.loads(lines[-1])


def _nt_available() -> bool:
    if not os.path.exists(NT_PYTHON):
        return False
    try:
        r = subprocess.run([NT_PYTHON, "-c", "import neural_tangents"], capture_output=True, timeout=120)
    except (subprocess.TimeoutExpired, OSError):
        return False
    return r.returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="n=32 and 64, float32 only, no 21-layer case")
    ap.add_argument("--ns", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    ap.add_argument("--heads", nargs="+", default=["flatten", "gap"], choices=["flatten", "gap"])
    ap.add_argument("--budget", default="1GB", help="ntkit memory_budget per tile ('none' for one tile)")
    ap.add_argument("--with-nt", action="store_true", help="also run neural-tangents (reference env)")
    ap.add_argument("--nt-gap-max-n", type=int, default=64, help="skip neural-tangents GAP above this n")
    ap.add_argument("--deep", action="store_true", help="also the 21-layer README CNN")
    ap.add_argument("--only-deep", action="store_true", help="run only the 21-layer README CNN cases")
    ap.add_argument("--deep-n", type=int, nargs=2, default=[8, 64], metavar=("N_GAP", "N_FLATTEN"))
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for ntkit (0: torch's default); 1 is much faster on a loaded machine")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many timed calls")
    ap.add_argument("--nt-repeat", type=int, default=None,
                    help="neural-tangents GAP: best of this many timed calls (default: --repeat)")
    ap.add_argument("--nt-no-jit-gap", action="store_true", help="run neural-tangents' GAP cases un-jitted")
    ap.add_argument("--timeout", type=float, default=900.0, help="per-case timeout in seconds")
    args = ap.parse_args()
    if args.quick:
        args.ns, args.dtypes = [32, 64], ["float32"]

    with_nt = args.with_nt and _nt_available()
    if args.with_nt and not with_nt:
        print(f"[neural-tangents env not found at {NT_PYTHON}: skipping its cases]")
    tmp = tempfile.mkdtemp(prefix="ntkit_bench_")
    ours_py = os.path.join(tmp, "ours_worker.py")
    nt_py = os.path.join(tmp, "nt_worker.py")
    with open(ours_py, "w") as f:
        f.write(_OURS_WORKER)
    with open(nt_py, "w") as f:
        f.write(_NT_WORKER)

    cases = [] if args.only_deep else [("cnn", h, n, d) for d in args.dtypes for h in args.heads for n in args.ns]
    if args.deep or args.only_deep:
        cases += [("deep", "gap", args.deep_n[0], "float32"), ("deep", "flatten", args.deep_n[1], "float32")]

    print(f"{'arch':5} {'head':8} {'n':>4} {'dtype':8} | {'ours s':>8} {'ours GB':>8} | {'NT s':>8} {'NT GB':>8} | "
          f"{'time ratio':>10} {'mem ratio':>9} | {'ms/entry ours':>13} {'ms/entry NT':>11} | max rel diff")
    rows = []
    for arch, head, n, dtype in cases:
        ours_out = os.path.join(tmp, f"ours_{arch}_{head}_{n}_{dtype}.npy")
        ours = _run([sys.executable, ours_py, arch, head, str(n), dtype, args.budget, ours_out,
                     str(args.threads), str(args.repeat)], args.timeout)
        nt: dict = {"error": "not run"}
        nt_out = os.path.join(tmp, f"nt_{arch}_{head}_{n}_{dtype}.npy")
        if with_nt:
            if head == "gap" and arch == "cnn" and n > args.nt_gap_max_n:
                nt = {"error": f"skipped (n > {args.nt_gap_max_n})"}
            else:
                rep = args.repeat if head == "flatten" or args.nt_repeat is None else args.nt_repeat
                nt = _run([NT_PYTHON, nt_py, arch, head, str(n), dtype, nt_out, str(rep),
                           "0" if args.nt_no_jit_gap else "1"], args.timeout)
        diff = ""
        if "error" not in ours and "error" not in nt:
            import numpy as np

            a, b = np.load(ours_out), np.load(nt_out)
            rel = np.abs(a - b) / np.max(np.abs(b))
            off = rel[~np.eye(rel.shape[0], dtype=bool)]  # entries pairing two different inputs
            # (an input with itself: neural-tangents' arc-cosine at correlation 1 carries a sqrt(eps)
            # error that ntkit pins exactly, so the diagonal differs more in float64)
            diff = f"{float(rel.max()):.1e} (off-diag {float(off.max()):.1e})"

        def fmt(d: dict, key: str) -> str:
            return f"{d[key]:8.3f}" if key in d else f"{'-':>8}"

        ratio_t = f"{ours['time'] / nt['time']:10.3f}" if "time" in ours and "time" in nt else f"{'-':>10}"
        ratio_m = f"{ours['peak_gb'] / nt['peak_gb']:9.3f}" if "time" in ours and "time" in nt else f"{'-':>9}"
        ms_o = f"{1e3 * ours['time'] / n ** 2:13.3f}" if "time" in ours else f"{'-':>13}"
        ms_n = f"{1e3 * nt['time'] / n ** 2:11.3f}" if "time" in nt else f"{'-':>11}"
        print(f"{arch:5} {head:8} {n:4d} {dtype:8} | {fmt(ours, 'time')} {fmt(ours, 'peak_gb')} | {fmt(nt, 'time')} "
              f"{fmt(nt, 'peak_gb')} | {ratio_t} {ratio_m} | {ms_o} {ms_n} | {diff}", flush=True)
        for who, d in (("ours", ours), ("nt", nt)):
            if "error" in d and d["error"] != "not run":
                print(f"    {who}: {d['error']}")
        rows.append({"arch": arch, "head": head, "n": n, "dtype": dtype, "ours": ours, "nt": nt, "max_rel_diff": diff})
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
