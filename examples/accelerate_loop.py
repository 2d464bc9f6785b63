"""Dual propagation with Hugging Face Accelerate: ``accelerator.backward(result.objective)``.

    python -m pip install accelerate
    python examples/accelerate_loop.py          # or: accelerate launch examples/accelerate_loop.py

Accelerate owns ``backward()`` (mixed precision, gradient accumulation, several processes), so the loop
hands it the Learner's surrogate objective, whose gradient is exactly the rule's update. Trains a
64-128-10 MLP on scikit-learn's digits with DP⊤ in seconds and prints the test accuracy.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

import dualprop
from dualprop.data import load_dataset


def main(epochs: int = 5, seed: int = 0, cpu: bool = True) -> float:
    """Train and return the test accuracy (a fraction)."""
    set_seed(seed)
    accelerator = Accelerator(cpu=cpu)
    digits = load_dataset("digits", validation_percent=0.0, flatten=True)
    learner = dualprop.Learner(dualprop.models.mlp([64, 128, 10]), rule="dpT", alpha=0.5, beta=0.1)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(digits.train, batch_size=32, shuffle=True)
    learner, optimizer, loader = accelerator.prepare(learner, optimizer, loader)

    for epoch in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            result = learner.objective(x, y)
            accelerator.backward(result.objective)
            optimizer.step()
        accelerator.print(f"epoch {epoch + 1}: last batch loss {result.loss:.3f}")

    x_test, y_test = (t.to(accelerator.device) for t in digits.test.tensors)
    with torch.no_grad():
        accuracy = (learner(x_test).argmax(dim=1) == y_test).float().mean().item()
    accelerator.print(f"test accuracy {100 * accuracy:.1f} %")
    return accuracy


if __name__ == "__main__":
    main()
