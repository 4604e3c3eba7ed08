"""max_learning_rate: gradient descent just below the bound converges, just above diverges."""

import pytest
import torch

import ntkit as nk
from ntkit.predict import max_learning_rate

D = torch.float64


def _linear_problem():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(12, 4, generator=g, dtype=D)
    y = torch.randn(12, 1, generator=g, dtype=D)
    # NTK of f(x) = w.x + b is x x^T + 1, exactly and for all parameters
    return x, y, x @ x.T + 1.0


@pytest.mark.parametrize("momentum", [0.0, 0.5])
@pytest.mark.parametrize("factor, converges", [(0.98, True), (1.02, False)])
def test_gd_below_converges_above_diverges(momentum, factor, converges):
    x, y, k = _linear_problem()
    eta = factor * max_learning_rate(k, momentum=momentum)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1).double()
    opt = "momentum" if momentum else "sgd"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rec = nk.train(model, x, y, lr=eta, steps=600, record=("loss",), record_every=100, optimizer=opt,
                       momentum=momentum)
    if converges:
        assert not rec.diverged
        assert rec.loss[-1] < rec.loss[0]
        a = torch.cat([x, torch.ones(12, 1, dtype=D)], 1)
        sol = torch.linalg.lstsq(a, y).solution
        best = float(0.5 * (a @ sol - y).pow(2).sum() / 12)  # the optimum of the convex problem
        assert rec.loss[-1] - best < 1e-6 * (rec.loss[0] - best)
    else:
        assert rec.diverged or rec.loss[-1] > 1e6 * rec.loss[0]


def test_formula_and_errors():
    k = torch.diag(torch.tensor([4.0, 1.0], dtype=D))
    assert max_learning_rate(k) == pytest.approx(2 * 2 / 4)
    assert max_learning_rate(k, momentum=0.5) == pytest.approx(3 * 2 / 4)
    assert max_learning_rate(k, loss_normalization=1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="momentum"):
        max_learning_rate(k, momentum=-0.1)
    with pytest.raises(ValueError, match="square"):
        max_learning_rate(torch.zeros(2, 3))
