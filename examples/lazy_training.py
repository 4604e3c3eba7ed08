"""Lazy training on scikit-learn digits: kernel and weight changes shrink like width^(-1/2).

A one-hidden-layer ReLU network in the NTK parameterisation (``--depth`` adds
hidden layers) is trained by full-batch gradient descent on MSE,
``L = 1/(2n) Σ (f − y)²``, for a fixed number of steps with step
``n / λ_max(Θ₀)``, at widths 64 ... 2048 and 3 seeds. After training we measure

* the relative NTK change ``||Θ_T − Θ_0||_F / ||Θ_0||_F`` on the training set;
* each layer's relative weight change ``||θ_T − θ_0|| / ||θ_0||``;

and fit log-log slopes against width (theory, NTK parameterisation: −½ for
both; Jacot et al. 2018, Lee et al. 2019).

Data: 200 training / 500 test digits (``sklearn.datasets.load_digits``),
features standardised, then each image scaled to norm ``sqrt(d)`` (so that
``x·x/d = 1`` after the first layer's ``1/sqrt(d)``); target ``+1`` for
digits 0-4, ``−1`` for 5-9.

Run::

    python examples/lazy_training.py              # about a minute on 2 idle cores
    python examples/lazy_training.py --quick      # widths 64..512, 2 seeds
    python examples/lazy_training.py --plot lazy.png
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ntkit import layers as L
from ntkit.diagnostics import lazy_scaling


def load_data(n_train: int, n_test: int) -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits

    x, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))[: n_train + n_test]
    x, labels = x[idx], labels[idx]
    mu, sd = x[:n_train].mean(0), x[:n_train].std(0)
    x = (x - mu) / np.where(sd > 0, sd, 1.0)
    x = x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(x.shape[1])
    y = np.where(labels < 5, 1.0, -1.0)
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return t(x[:n_train]), t(y[:n_train]), t(x[n_train:]), t(y[n_train:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--depth", type=int, default=1, help="number of hidden layers")
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--method", default="structured", help="empirical NTK method (structured is fastest here)")
    ap.add_argument("--quick", action="store_true", help="widths 64..512, 2 seeds")
    ap.add_argument("--plot", default=None, help="save the scaling figure to this path")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a busy machine)")
    args = ap.parse_args()
    if args.quick:
        args.widths, args.seeds = [64, 128, 256, 512], 2
    torch.set_num_threads(args.threads)
    t0 = time.time()
    x, y, xte, yte = load_data(args.n_train, 500)
    hidden = []
    for _ in range(args.depth):
        hidden += [L.Dense(512, W_std=np.sqrt(2.0), b_std=0.1), L.Relu()]
    arch = L.serial(*hidden, L.Dense(1, b_std=0.1))
    res = lazy_scaling(arch, x, y, args.widths, seeds=range(args.seeds), steps=args.steps, lr="auto",
                       dtype=torch.float32, x_test=xte, y_test=yte, method=args.method)
    layers = list(res.weight_change)
    print(f"digits: n_train={x.shape[0]}, n_test={xte.shape[0]}, depth={args.depth}, steps={args.steps}, "
          f"seeds={args.seeds}, lr = n/λ_max(Θ₀) (mean {res.lrs.mean():.3g})")
    head = f"{'width':>6} {'NTK change':>11} " + " ".join(f"{'W ' + g:>11}" for g in layers)
    print(head + f" {'train loss':>10} {'test err':>8}")
    for i, w in enumerate(res.widths):
        row = f"{w:>6} {res.kernel_change[i].mean():>11.4f} "
        row += " ".join(f"{res.weight_change[g][i].mean():>11.4f}" for g in layers)
        row += f" {res.loss[i].mean():>10.4f} {res.test_error[i].mean():>8.3f}"
        print(row)
    print("log-log slopes against width (95% CI); theory in the NTK parameterisation: -0.5")
    print(f"  NTK change        {res.kernel_fit}")
    for g in layers:
        print(f"  weights {g:<9} {res.weight_fits[g]}")
    # seed 003's bound on these training inputs: true labels vs the same labels shuffled
    from ntkit.diagnostics import generalization_bound, kernel_target_alignment

    perm = torch.randperm(y.shape[0], generator=torch.Generator().manual_seed(0))
    b_true = generalization_bound(y.double(), x.double(), normalize=True)
    b_rand = generalization_bound(y[perm].double(), x.double(), normalize=True)
    theta_inf = arch.kernel(x.double(), get="ntk").ntk
    print(f"Arora et al. bound sqrt(2 y^T H^-1 y / n): true labels {b_true.bound:.3f}, "
          f"shuffled labels {b_rand.bound:.3f}")
    print(f"alignment of the infinite-width NTK with the labels (centred): true "
          f"{kernel_target_alignment(theta_inf, y.double(), centered=True):.3f}, shuffled "
          f"{kernel_target_alignment(theta_inf, y[perm].double(), centered=True):.3f}")
    print(f"total time {time.time() - t0:.1f} s")
    if args.plot:
        from ntkit.diagnostics.plots import plot_lazy_scaling

        plot_lazy_scaling(res).savefig(args.plot, dpi=120)
        print(f"figure written to {args.plot}")


if __name__ == "__main__":
    main()
