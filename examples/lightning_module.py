"""Dual propagation inside PyTorch Lightning: a ``LightningModule`` with manual optimisation.

    python -m pip install lightning
    python examples/lightning_module.py

Lightning owns ``backward()``, so the step hands it the Learner's surrogate objective:
``self.manual_backward(learner.objective(x, y).objective)`` accumulates exactly the rule's update.
Trains a 64-128-10 MLP on scikit-learn's digits with DP⊤ on the CPU in seconds and prints the test
accuracy.
"""

from __future__ import annotations

import lightning
import torch
from torch.utils.data import DataLoader

import dualprop
from dualprop.data import load_dataset


class DualPropClassifier(lightning.LightningModule):
    """A classifier trained by a dual-propagation rule (any ``dualprop.Learner`` setting)."""

    def __init__(self, sizes: list[int], lr: float = 0.05, **rule: object):
        super().__init__()
        self.automatic_optimization = False  # the Learner's objective, not a loss, is differentiated
        self.learner = dualprop.Learner(dualprop.models.mlp(sizes), **rule)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.learner(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_index: int) -> None:
        x, y = batch
        optimizer = self.optimizers()
        optimizer.zero_grad()
        result = self.learner.objective(x, y)
        self.manual_backward(result.objective)
        optimizer.step()
        self.log("train_loss", result.loss, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_index: int) -> None:
        x, y = batch
        self.log("test_acc", (self(x).argmax(dim=1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # learner.parameters(): the model's weights plus any Kolen–Pollack feedback weights
        return torch.optim.SGD(self.learner.parameters(), lr=self.lr, momentum=0.9)


def main(epochs: int = 5, seed: int = 0, root: str = "lightning_runs") -> float:
    """Train and return the test accuracy (a fraction); Lightning's files go under ``root``."""
    lightning.seed_everything(seed, verbose=False)
    digits = load_dataset("digits", validation_percent=0.0, flatten=True)
    module = DualPropClassifier([64, 128, 10], rule="dpT", alpha=0.5, beta=0.1)
    trainer = lightning.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(module, DataLoader(digits.train, batch_size=32, shuffle=True))
    (result,) = trainer.test(module, DataLoader(digits.test, batch_size=256), verbose=False)
    print(f"test accuracy {100 * result['test_acc']:.1f} %")
    return result["test_acc"]


if __name__ == "__main__":
    main()
