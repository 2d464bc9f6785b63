"""Dual propagation in a plain PyTorch loop: your DataLoader, your optimizer, a ``Learner`` for backward.

    python examples/plain_loop.py

trains a 64-128-10 MLP on scikit-learn's digits with DP⊤ for a few epochs (seconds on a CPU) and prints
the test accuracy. ``learner.step(x, y)`` puts the rule's update into ``.grad`` as ``loss.backward()``
would; it is ``learner.objective(x, y).objective.backward()``, the form to use when something else owns
``backward()`` (a ``GradScaler``, Lightning, Accelerate: see the other examples).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

import dualprop
from dualprop.data import load_dataset


def main(epochs: int = 5, seed: int = 0) -> float:
    """Train and return the test accuracy (a fraction)."""
    torch.manual_seed(seed)
    digits = load_dataset("digits", validation_percent=0.0, flatten=True)  # normalised TensorDatasets
    loader = DataLoader(digits.train, batch_size=32, shuffle=True)

    model = dualprop.models.mlp([64, 128, 10])
    learner = dualprop.Learner(model, rule="dpT", alpha=0.5, beta=0.1, schedule="forward-backward")
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.05, momentum=0.9)

    for epoch in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            result = learner.step(x, y)  # the rule's update, accumulated into .grad
            optimizer.step()
        print(f"epoch {epoch + 1}: last batch loss {result.loss:.3f}")

    x_test, y_test = digits.test.tensors
    with torch.no_grad():
        accuracy = (learner(x_test).argmax(dim=1) == y_test).float().mean().item()
    print(f"test accuracy {100 * accuracy:.1f} %")
    return accuracy


if __name__ == "__main__":
    main()
