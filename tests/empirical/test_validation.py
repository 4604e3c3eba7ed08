"""Bad input gives a clear ValueError/TypeError naming the argument; train-mode refusal."""

import pytest
import torch
from torch import nn

import ntkit as nk

from ._models import mixed, mlp


@pytest.fixture
def net():
    return mlp()


def x64(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def test_non_finite_inputs(net):
    x = x64(3, 5)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="x1 contains 1 non-finite"):
        nk.empirical_ntk(net, x)
    y = x64(2, 5)
    y[0, 0] = float("inf")
    with pytest.raises(ValueError, match="x2 contains"):
        nk.empirical_ntk(net, x64(3, 5), y)


def test_shape_dtype_device_mismatches(net):
    with pytest.raises(ValueError, match="x2 has per-example shape"):
        nk.empirical_ntk(net, x64(3, 5), x64(2, 4))
    with pytest.raises(TypeError, match=r"x1 has dtype torch.float32 .* cast"):
        nk.empirical_ntk(net, torch.randn(3, 5))
    with pytest.raises(TypeError, match="x2 has dtype torch.float32"):
        nk.empirical_ntk(net, x64(3, 5), torch.randn(2, 5))
    with pytest.raises(ValueError, match="x1 is on device meta"):
        nk.empirical_ntk(net, torch.empty(3, 5, dtype=torch.float64, device="meta"))
    with pytest.raises(TypeError, match="x1 must be a torch.Tensor or numpy array"):
        nk.empirical_ntk(net, "abc")
    with pytest.raises(ValueError, match="x1 is empty"):
        nk.empirical_ntk(net, x64(0, 5))


def test_integer_inputs():
    ids = torch.randint(0, 13, (3, 7))
    assert nk.empirical_ntk(mixed(), ids).shape == (3, 3)  # token ids for an embedding model
    net = mlp()  # no embedding: integer inputs are cast to the model's dtype
    xi = torch.randint(-2, 3, (3, 5))
    torch.testing.assert_close(nk.empirical_ntk(net, xi), nk.empirical_ntk(net, xi.double()))


def test_bad_options(net):
    x = x64(3, 5)
    with pytest.raises(ValueError, match="output must be one of"):
        nk.empirical_ntk(net, x, output="diag")
    with pytest.raises(ValueError, match="method must be one of"):
        nk.empirical_ntk(net, x, method="fast")
    with pytest.raises(ValueError, match="pass x2=None"):
        nk.empirical_ntk(net, x, x64(2, 5), output="diagonal")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        nk.empirical_ntk(net, x, batch_size=0)
    with pytest.raises(ValueError, match="memory_budget must look like"):
        nk.empirical_ntk(net, x, memory_budget="lots")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        nk.empirical_ntk(lambda t: t, x)


def test_bad_params(net):
    x = x64(3, 5)
    with pytest.raises(ValueError, match=r"not parameters of model; valid names: \['0.weight'"):
        nk.empirical_ntk(net, x, params=["0.weight", "nope"])
    with pytest.raises(ValueError, match=r"params\[0\] .* is not a parameter of model"):
        nk.empirical_ntk(net, x, params=[torch.zeros(3)])
    with pytest.raises(ValueError, match="selected no parameter"):
        nk.empirical_ntk(net, x, params=lambda n, p: False)
    with pytest.raises(ValueError, match="params is empty"):
        nk.empirical_ntk(net, x, params=[])
    with pytest.raises(TypeError, match="not a mix"):
        nk.empirical_ntk(net, x, params=["0.weight", net[0].bias])
    frozen = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        nk.empirical_ntk(frozen, x)
    with pytest.raises(ValueError, match="no parameters"):
        nk.empirical_ntk(nn.Tanh(), x)


def test_bad_model_outputs():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 2)

        def forward(self, x):
            return self.lin(x), x

    with pytest.raises(TypeError, match="model must return a single tensor"):
        nk.empirical_ntk(Pair().double(), x64(3, 5))


@pytest.mark.parametrize("layer", [nn.BatchNorm1d(7), nn.Dropout(0.2)])
def test_train_mode_batchnorm_dropout_refused(layer):
    net = nn.Sequential(nn.Linear(5, 7), layer, nn.ReLU(), nn.Linear(7, 2)).double()
    x = x64(4, 5)
    with pytest.raises(ValueError, match=r"train mode .* model.eval\(\)"):
        nk.empirical_ntk(net, x)
    with pytest.raises(ValueError, match="batch-dependent"):
        nk.empirical_nngp(net, x)
    with pytest.raises(ValueError, match="train mode"):
        nk.ntk_vector_product(net, x)
    net.eval()
    K = nk.empirical_ntk(net, x, method="structured")
    torch.testing.assert_close(K, nk.empirical_ntk(net, x, method="jacobian"), rtol=1e-10, atol=1e-12)


def test_allow_train_mode_and_batchnorm_without_running_stats():
    net = nn.Sequential(nn.Linear(5, 7), nn.Dropout(0.0), nn.Linear(7, 2)).double()
    assert nk.empirical_ntk(net, x64(3, 5)).shape == (3, 3)  # p=0 dropout is harmless
    bn = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7, track_running_stats=False), nn.Linear(7, 2)).double().eval()
    with pytest.raises(ValueError, match="BatchNorm1d"):
        nk.empirical_ntk(bn, x64(3, 5))
    drop = nn.Sequential(nn.Linear(5, 7), nn.Dropout(0.5), nn.Linear(7, 2)).double()
    out = nk.empirical_ntk(drop, x64(3, 5), method="jacobian", allow_train_mode=True)
    assert out.shape == (3, 3) and bool(torch.isfinite(out).all())
