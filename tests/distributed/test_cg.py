"""Preconditioned CG against dense direct solves; preconditioners and their effect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkit import distributed as D


def _rbf(n: int, seed: int = 0, lengthscale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return torch.exp(-torch.cdist(x, x) ** 2 / (2 * lengthscale**2))


def _exact(K: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
    return torch.linalg.solve(K + ridge * torch.eye(K.shape[0], dtype=K.dtype), y)


@pytest.mark.parametrize("preconditioner", [None, "pivoted_cholesky", "nystrom"])
def test_cg_matches_direct_solve(preconditioner):
    K = _rbf(200)
    y = torch.randn(200, 3, dtype=torch.float64)
    res = D.cg_solve(K, y, ridge=1e-2, preconditioner=preconditioner, rank=40, tol=1e-11)
    exact = _exact(K, y, 1e-2)
    assert res.converged and res.relative_residual < 1e-10
    # forward error <= cond(A) * backward error; cond(K + 1e-2 I) <= (||K|| + 1e-2) / 1e-2
    cond = (torch.linalg.matrix_norm(K, 2) + 1e-2) / 1e-2
    err = torch.linalg.vector_norm(res.x - exact, dim=0) / torch.linalg.vector_norm(exact, dim=0)
    assert float(err.max()) <= float(cond) * 1e-10


def test_cg_on_store_and_memmap_matches_tensor(tmp_path):
    K = _rbf(90)
    y = torch.randn(90, dtype=torch.float64)
    st = D.kernel(_rbf_rows, torch.arange(90.0)[:, None],
                  store=str(tmp_path / "s"), get="k", batch_size=32, dtype=torch.float64)
    np.testing.assert_allclose(st.read_rows("k", 0, 90), K.numpy(), rtol=0, atol=1e-15)
    exact = _exact(K, y, 1e-2)
    for src in (st, str(tmp_path / "s"), st.array("k"), K):
        res = D.cg_solve(src, y, ridge=1e-2, tol=1e-12, memory_budget=90 * 16 * 7)  # 7-row chunks
        torch.testing.assert_close(res.x, exact, rtol=1e-9, atol=1e-9)


_K90 = _rbf(90)


def _rbf_rows(a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    ia = a[:, 0].long()
    ib = ia if b is None else b[:, 0].long()
    return _K90[ia][:, ib]


def test_preconditioning_reduces_iterations():
    K = _rbf(400, seed=1, lengthscale=2.0)  # fast spectral decay: badly conditioned with a small ridge
    y = torch.randn(400, dtype=torch.float64)
    it = {}
    for p in (None, "pivoted_cholesky", "nystrom"):
        res = D.cg_solve(K, y, ridge=1e-4, preconditioner=p, rank=60, tol=1e-8)
        assert res.converged
        torch.testing.assert_close(res.x, _exact(K, y, 1e-4), rtol=1e-3, atol=1e-3 * float(res.x.abs().max()))
        it[p] = res.iterations
    assert it["pivoted_cholesky"] <= it[None] and it["nystrom"] <= it[None], it
    assert it["pivoted_cholesky"] < it[None] / 2, it  # the measured gain is large, not marginal


def test_pivoted_cholesky_error_decreases_and_is_exact_at_full_rank():
    a = torch.randn(50, 6, dtype=torch.float64)
    K = a @ a.T + _rbf(50) * 1e-3
    op = D.KernelOperator(K)
    errs = []
    for r in (1, 5, 20, 50):
        L = D.pivoted_cholesky(op, r)
        errs.append(float(torch.trace(K - L @ L.T)))
    assert all(e2 <= e1 + 1e-12 for e1, e2 in zip(errs, errs[1:], strict=False)), errs
    assert errs[-1] < 1e-8 * float(torch.trace(K))


def test_cg_errors():
    K = _rbf(10)
    with pytest.raises(ValueError, match="ridge > 0"):
        D.cg_solve(K, torch.ones(10), preconditioner="nystrom")
    with pytest.raises(ValueError, match="y must have shape"):
        D.cg_solve(K, torch.ones(11))
    with pytest.raises(ValueError, match="square"):
        D.KernelOperator(torch.ones(3, 4))
    with pytest.raises(ValueError, match="ridge must be"):
        D.KernelOperator(K, ridge=-1.0)
    with pytest.raises(ValueError, match="preconditioner must be"):
        D.cg_solve(K, torch.ones(10), ridge=1.0, preconditioner="jacobi")
    with pytest.raises(TypeError, match="K must be"):
        D.cg_solve([[1.0]], torch.ones(1))


def test_matrix_free_operator_matches_stored_kernel():
    from ntkit import layers as L

    arch = L.serial(L.Dense(64, W_std=1.4, b_std=0.1), L.Relu(), L.Dense(1, W_std=1.4, b_std=0.1))
    x = torch.randn(120, 4, dtype=torch.float64)
    y = torch.randn(120, dtype=torch.float64)
    K = arch.kernel(x, get="ntk").ntk
    op = D.KernelOperator.matrix_free(arch, x, ridge=0.05, memory_budget=120 * 16 * 25)  # 25-row chunks
    K_mf = op.matmul(torch.eye(120, dtype=torch.float64)) - 0.05 * torch.eye(120, dtype=torch.float64)
    # rows are computed as cross kernels x[rows] vs x: on the diagonal arccos(1 - O(eps)) may differ from the
    # symmetric computation by ~sqrt(2 eps) relative, hence 1e-7 here rather than 1e-12
    torch.testing.assert_close(K_mf, K, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(op.diagonal(), torch.diagonal(K), rtol=1e-12, atol=1e-12)
    res = D.cg_solve(op, y, preconditioner="pivoted_cholesky", rank=20, tol=1e-11)
    torch.testing.assert_close(res.x, _exact(K_mf, y, 0.05), rtol=1e-8, atol=1e-8)
