"""Small models with the shapes that make cutting hard: skips, branches, several in/outputs."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Chain(nn.Module):
    """A plain MLP-ish chain."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SkipNet(nn.Module):
    """Conv net with a residual skip and a two-way branch joined by concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b1 = nn.Conv2d(8, 4, 1)
        self.b2 = nn.Conv2d(8, 4, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(self.a(y) + y)
        y = torch.cat([self.b1(y), self.b2(y)], dim=1)
        return self.head(y.mean(dim=(2, 3)))


class TwoInTwoOut(nn.Module):
    """Two inputs (floats and an int mask), a dict output, and a buffer sliced per call."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("pos", torch.arange(64).float().unsqueeze(0), persistent=False)
        self.emb = nn.Linear(4, 12)
        self.layers = nn.ModuleList(nn.Linear(12, 12) for _ in range(3))
        self.out = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        seq = x.shape[1]
        h = self.emb(x) + self.pos[:, :seq].unsqueeze(-1)
        m = mask.unsqueeze(-1).to(h.dtype)
        for layer in self.layers:
            h = torch.tanh(layer(h)) * m + h
        b = x.shape[0]
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return {"hidden": h.reshape(b, seq, 12), "logits": self.out(pooled)}


class Transposed(nn.Module):
    """Attention-like layouts that cross cuts: transposed heads, a select and an expand.

    The views after the transposes only work with the strides the head produced, so a tail
    fed contiguous copies (as off the wire) must lay its inputs out again.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 12)
        self.register_buffer("gain", torch.linspace(0.5, 1.5, 5).unsqueeze(0))
        self.out = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h = self.fc(x)  # (b, 6, 12)
        q = h.view(b, 6, 3, 4).transpose(1, 2) * 2.0  # (b, 3, 6, 4), not contiguous
        k = h.view(b, 6, 3, 4).permute(0, 2, 1, 3)
        y = (q + 1.0).transpose(1, 2).reshape(b, 6, 12)  # contiguous again: a real view
        z = k.transpose(1, 2).reshape(b, 6, 12)
        first = h[:, 0]  # a select: strided with gaps
        gain = self.gain.expand_as(first[:, :5])  # stride 0 along the batch
        return self.out(torch.relu(y) + z + first.unsqueeze(1)) * gain.unsqueeze(1)


class DataDependent(nn.Module):
    """Branches on a tensor's value: neither torch.export nor torch.fx can capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if y.sum() > 0:
            return y * 2
        return y


def build_chain() -> nn.Module:
    torch.manual_seed(0)
    return Chain()


def build_skipnet() -> nn.Module:
    torch.manual_seed(0)
    return SkipNet()


class DigitsNet(nn.Module):
    """uint8 (N, 32, 32, 1) frames -> 10 class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        # (N, H, W, 1) -> (N, 1, H, W) by unsqueeze: plainly contiguous strides (a permute of
        # one channel has strides convolutions may read as channels-last)
        x = frame[..., 0].unsqueeze(1).float() / 255.0
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def digit_frames(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (8x8, 0..16) as uint8 (N, size, size, 1) frames (bilinear), and
    their labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    out = [np.asarray(Image.fromarray((img * 255 / 16).astype(np.uint8))
                      .resize((size, size), Image.Resampling.BILINEAR)) for img in data.images]
    return np.stack(out)[..., None], data.target.astype(int)


def train_digits_net(frames: np.ndarray, labels: np.ndarray, epochs: int) -> DigitsNet:
    """A DigitsNet trained on ``frames`` (Adam, batches of 50, seed 0), in eval mode."""
    torch.manual_seed(0)
    model = DigitsNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(frames), torch.from_numpy(labels)
    for _ in range(epochs):
        for i in range(0, len(x), 50):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 50]), y[i:i + 50]).backward()
            opt.step()
    return model.eval()
