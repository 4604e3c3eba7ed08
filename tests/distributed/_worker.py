"""Worker run by torchrun in the distributed tests (not a test module itself).

Computes the empirical NTK of a small seeded float64 MLP into a store with
``ntkit.distributed.kernel`` and solves ``(K + λI) α = y`` with ``cg_solve``,
then writes this rank's stats and (rank 0) the solution to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

import numpy as np
import torch

from ntkit import distributed as D


def make_model(d: int) -> torch.nn.Module:
    torch.manual_seed(1234)
    return torch.nn.Sequential(torch.nn.Linear(d, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)).double()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ridge", type=float, default=1e-2)
    p.add_argument("--no-solve", action="store_true")
    a = p.parse_args()
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    try:
        rank = torch.distributed.get_rank()
        with np.load(a.data, allow_pickle=False) as f:
            x, y = torch.from_numpy(f["x"]), torch.from_numpy(f["y"])
        model = make_model(x.shape[1])
        st = D.kernel(model, x, store=a.store, get="ntk", batch_size=a.batch_size, dtype=torch.float64)
        out = {"stats": st.stats}
        if not a.no_solve:
            res = D.cg_solve(st, y, ridge=a.ridge, preconditioner="pivoted_cholesky", rank=5, tol=1e-12)
            out.update(iterations=res.iterations, converged=res.converged,
                       relative_residual=res.relative_residual, rows=list(D.KernelOperator(st).rows))
            if rank == 0:
                np.save(os.path.join(a.out, "alpha.npy"), res.x.numpy())
        with open(os.path.join(a.out, f"rank{rank}.json"), "w") as fh:
            json.dump(out, fh)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
