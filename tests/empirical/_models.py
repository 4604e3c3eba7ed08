"""Small float64 models shared by the empirical-kernel tests."""

import torch
from torch import nn


class Tilt(nn.Module):
    """A parameter the structured path knows nothing about (forces the autograd fallback)."""

    def __init__(self, d):
        super().__init__()
        self.a = nn.Parameter(torch.randn(d))
        self.c = nn.Parameter(torch.tensor(0.3))

    def forward(self, x):
        return x * torch.tanh(self.a) + self.c**2 * x.sum(-1, keepdim=True)


class Mixed(nn.Module):
    """Embedding + LayerNorm + Conv1d + Linear (with a sequence axis) + dense head."""

    def __init__(self, vocab=13, emb=6, seq=7, k=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb, padding_idx=0)
        self.ln = nn.LayerNorm(emb)
        self.conv = nn.Conv1d(emb, 5, 3, padding=1, padding_mode="circular")
        self.lin = nn.Linear(5, 4)
        self.head = nn.Linear(4 * seq, k)

    def forward(self, ids):
        h = self.ln(self.emb(ids))
        h = self.conv(h.transpose(1, 2)).transpose(1, 2)
        h = torch.tanh(self.lin(h))
        return self.head(h.flatten(1))


def mlp(d=5, h=7, k=3):
    return nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, k)).double()


def cnn(k=2):
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 3, 3, stride=2, dilation=1, padding=1, padding_mode="reflect"), nn.GroupNorm(1, 3),
        nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Linear(5, k),
    ).double().eval()


def with_fallback(d=4, k=2):
    return nn.Sequential(nn.Linear(d, 6), Tilt(6), nn.Tanh(), nn.Linear(6, k)).double()


def mixed():
    return Mixed().double()


def cases():
    """(name, model, x1, x2) with small float64 inputs."""
    g = torch.Generator().manual_seed(1)
    return [
        ("mlp", mlp(), torch.randn(5, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)),
        ("cnn", cnn(), torch.randn(4, 2, 6, 6, generator=g, dtype=torch.float64), torch.randn(3, 2, 6, 6, generator=g, dtype=torch.float64)),
        ("mixed", mixed(), torch.randint(0, 13, (4, 7), generator=g), torch.randint(0, 13, (3, 7), generator=g)),
        ("fallback", with_fallback(), torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)),
    ]
