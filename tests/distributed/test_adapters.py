"""GPyTorch linear_operator adapter (skipped when linear_operator is not installed)."""

from __future__ import annotations

import pytest
import torch

from ntkit import distributed as D

lo_mod = pytest.importorskip("linear_operator")


def test_linear_operator_products_and_solve_match_dense(tmp_path):
    from ntkit.distributed.adapters import as_linear_operator

    x = torch.randn(60, 3, dtype=torch.float64)
    K = D.ntk_relu_fc(x, depth=2)
    st = D.kernel(lambda a, b: D.ntk_relu_fc(a, b, depth=2), x, store=str(tmp_path / "s"), get="ntk",
                  batch_size=16, dtype=torch.float64)
    lo = as_linear_operator(st, memory_budget=60 * 16 * 9)
    v = torch.randn(60, 2, dtype=torch.float64)
    assert lo.shape == (60, 60)
    torch.testing.assert_close(lo @ v, K @ v, rtol=1e-7, atol=1e-9)  # store tiles vs full: arccos rounding
    torch.testing.assert_close(lo.diagonal(), torch.diagonal(K), rtol=1e-7, atol=1e-9)
    A = lo.add_diagonal(torch.tensor(0.1, dtype=torch.float64))
    y = torch.randn(60, dtype=torch.float64)
    Kst = torch.from_numpy(st.read_rows("ntk", 0, 60))
    exact = torch.linalg.solve(Kst + 0.1 * torch.eye(60, dtype=torch.float64), y)
    torch.testing.assert_close(A.solve(y[:, None])[:, 0], exact, rtol=1e-6, atol=1e-6)
