"""A small PyTorch MLP for the demo: 8x8 handwritten digits (scikit-learn's load_digits, pixel
values 0..16) -> 10 logits. Trained for a few epochs on one thread with a fixed seed."""
from __future__ import annotations

import numpy as np
import torch

SEED = 0
EPOCHS = 15
BATCH = 64


class DigitsMLP(torch.nn.Module):
    def __init__(self, hidden: int = 64):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # Clients send raw pixel values 0..16; scaling inside the model keeps that contract.
        return self.layers(pixels / 16.0)


def digits_mlp() -> DigitsMLP:
    from sklearn.datasets import load_digits

    pixels, digits = load_digits(return_X_y=True)
    threads = torch.get_num_threads()
    torch.manual_seed(SEED)
    torch.set_num_threads(1)  # one thread: the same weights on every run
    try:
        model = DigitsMLP()
        inputs = torch.from_numpy(pixels.astype(np.float32))
        targets = torch.from_numpy(digits.astype(np.int64))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        order = torch.Generator().manual_seed(SEED)
        with torch.enable_grad():  # also when called under no_grad
            for _ in range(EPOCHS):
                for batch in torch.randperm(len(inputs), generator=order).split(BATCH):
                    optimizer.zero_grad()
                    torch.nn.functional.cross_entropy(model(inputs[batch]), targets[batch]).backward()
                    optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()
