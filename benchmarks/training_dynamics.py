"""Training dynamics of DP⊤ and DP on Fashion-MNIST under SGD and Adam.

Tests two observations made on another benchmark: with Adam, DP⊤ at α = 1 peaks early and then
declines while its first layer's update turns away from backprop's gradient (~50°) and about half of
the first layer's ReLUs die; and DP collapses as the number of inference passes grows.

Every run trains the 784-512-512-10 ReLU MLP of the Fashion-MNIST study (squared error, batch 100)
for ``--epochs`` short epochs of ``--batches`` batches and records after each epoch: validation
accuracy (the 6000 held-out images), the angle between the rule's update and backprop's gradient per
layer (:func:`dualprop.analysis.gradient_angles.gradient_angles`, on the same fixed 500 training
images every epoch) and the share of dead ReLUs per hidden layer on the validation images
(:func:`dualprop.analysis.activity.dead_fractions`). Rows go to ``dynamics.csv`` as each run ends (a
rerun skips the runs already there), a summary table to ``dynamics.md``, the figure to ``dynamics.png``::

    PYTHONPATH=src nice -n 19 python benchmarks/training_dynamics.py --out docs/results/dynamics
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from dualprop import Learner
from dualprop.analysis.activity import dead_fractions
from dualprop.analysis.gradient_angles import gradient_angles
from dualprop.analysis.plotting import pyplot, save_png
from dualprop.data import load_dataset
from dualprop.models import mlp
from dualprop.training.trainer import evaluate

COLUMNS = (
    "optimizer",
    "label",
    "rule",
    "alpha",
    "beta",
    "passes",
    "epoch",
    "val_acc",
    "angle_1",
    "angle_2",
    "angle_3",
    "dead_1",
    "dead_2",
    "diverged",
)


@dataclass(frozen=True)
class Setting:
    rule: str
    alpha: float = 0.5
    beta: float = 0.1
    passes: int = 1

    @property
    def label(self) -> str:
        if self.rule == "bp":
            return "backprop"
        name = {"dpT": "DP⊤", "dp": "DP"}[self.rule]
        return f"{name} α={self.alpha:g} β={self.beta:g}" + ("" if self.rule == "dpT" else f" fwbw×{self.passes}")

    @property
    def schedule(self) -> str:
        return "backward" if self.rule == "dpT" else "forward-backward"


SETTINGS = [
    Setting("bp"),
    Setting("dpT", 1.0, 0.1),
    Setting("dpT", 1.0, 1.0),
    *(Setting("dp", 1.0, 1.0, passes) for passes in (1, 4, 8)),
]
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3),
}


def run(setting: Setting, optimizer_name: str, data, epochs: int, batches: int, seed: int) -> list[dict]:
    """Train one setting; one row per epoch (rows after a divergence are not produced)."""
    torch.manual_seed(seed)
    model = mlp([784, 512, 512, 10])
    learner = Learner(
        model,
        rule=setting.rule,
        alpha=setting.alpha,
        beta=setting.beta,
        schedule=setting.schedule,
        passes=setting.passes,
        loss="mse",
    )
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    train, validation, _ = data.loaders(100, seed=seed, eval_batch_size=1000)
    fixed_x, fixed_y = next(iter(data.loaders(500, seed=seed + 1)[0]))
    rows = []
    for epoch in range(1, epochs + 1):
        diverged = False
        for index, (x, y) in enumerate(train):
            if index == batches:
                break
            optimizer.zero_grad()
            result = learner.step(x, y)
            if not (math.isfinite(result.loss) and result.states_finite):
                diverged = True
                break
            optimizer.step()
        diverged = diverged or not all(torch.isfinite(p).all() for p in model.parameters())
        angles = [a.angle for a in gradient_angles(learner, fixed_x, fixed_y)] if not diverged else [math.nan] * 3
        dead = dead_fractions(model, (x for x, _ in validation)) if not diverged else [math.nan] * 2
        rows.append(
            {
                "optimizer": optimizer_name,
                "label": setting.label,
                "rule": setting.rule,
                "alpha": setting.alpha,
                "beta": setting.beta,
                "passes": setting.passes,
                "epoch": epoch,
                "val_acc": math.nan if diverged else evaluate(model, validation, "mse").top1,
                "angle_1": angles[0],
                "angle_2": angles[1],
                "angle_3": angles[2],
                "dead_1": dead[0],
                "dead_2": dead[1],
                "diverged": int(diverged),
            }
        )
        print(
            f"{optimizer_name} {setting.label} epoch {epoch}: val {rows[-1]['val_acc']:.2f} % "
            f"angles {' '.join(f'{a:.1f}' for a in angles)} dead {' '.join(f'{d:.2f}' for d in dead)}",
            flush=True,
        )
        if diverged:
            break
    return rows


def summary(rows: list[dict]) -> str:
    """One Markdown row per run: peak and last validation accuracy, first-layer angle and dead share."""
    lines = [
        "| optimizer | setting | peak val acc (%) at epoch | last val acc (%) | layer-1 angle (°) first → last "
        "epoch | layer-2 angle (°) last | layer-1 dead share first → last | diverged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in dict.fromkeys((r["optimizer"], r["label"]) for r in rows):
        run = [r for r in rows if (r["optimizer"], r["label"]) == key]
        finite = [r for r in run if math.isfinite(r["val_acc"])]
        peak = max(finite, key=lambda r: r["val_acc"], default=None)
        first, last = (finite[0], finite[-1]) if finite else (None, None)
        lines.append(
            f"| {key[0].upper()} | {key[1]} | "
            + (
                f"{peak['val_acc']:.2f} @ {int(peak['epoch'])} | {last['val_acc']:.2f} | "
                f"{first['angle_1']:.1f} → {last['angle_1']:.1f} | {last['angle_2']:.1f} | "
                f"{first['dead_1']:.2f} → {last['dead_1']:.2f} | "
                if peak
                else "– | – | – | – | – | "
            )
            + ("yes, epoch " + str(int(run[-1]["epoch"])) if any(r["diverged"] for r in run) else "no")
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> bool:
    """Draw the figure; False (nothing written) when matplotlib is not installed."""
    plt = pyplot()
    if plt is None:
        return False

    optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
    panels = (
        ("val_acc", "validation accuracy (%)"),
        ("angle_1", "layer 1: angle to backprop (°)"),
        ("dead_1", "layer 1: dead ReLUs (share)"),
    )
    figure, axes = plt.subplots(len(optimizers), 3, figsize=(16, 4 * len(optimizers)), squeeze=False)
    for row_axes, optimizer in zip(axes, optimizers):
        labels = list(dict.fromkeys(r["label"] for r in rows if r["optimizer"] == optimizer))
        for axis, (column, title) in zip(row_axes, panels):
            for label in labels:
                points = [(r["epoch"], r[column]) for r in rows if r["optimizer"] == optimizer and r["label"] == label]
                style = {"color": "black", "linestyle": "--"} if label == "backprop" else {}
                axis.plot(*zip(*points), marker=".", label=label, **style)
            axis.set(title=f"{optimizer.upper()}: {title}", xlabel="epoch")
        row_axes[0].legend(fontsize="x-small")
    figure.tight_layout()
    save_png(figure, path)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for dynamics.csv and dynamics.png")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batches", type=int, default=40, help="batches of 100 per epoch")
    parser.add_argument("--seed", type=int, default=1988)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--optimizers", nargs="+", choices=list(OPTIMIZERS), default=list(OPTIMIZERS))
    parser.add_argument("--rules", nargs="+", choices=["bp", "dpT", "dp"], default=["bp", "dpT", "dp"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    table = args.out / "dynamics.csv"
    done = set()
    if table.exists():
        with open(table, newline="", encoding="utf-8") as file:
            done = {(r["optimizer"], r["label"]) for r in csv.DictReader(file)}
    else:
        with open(table, "w", newline="", encoding="utf-8") as file:
            csv.writer(file).writerow(COLUMNS)
    data = load_dataset("fashion-mnist", root=args.data_dir, validation_percent=10.0, seed=args.seed, flatten=True)
    for optimizer in args.optimizers:
        for setting in SETTINGS:
            if (optimizer, setting.label) in done or setting.rule not in args.rules:
                continue
            rows = run(setting, optimizer, data, args.epochs, args.batches, args.seed)
            with open(table, "a", newline="", encoding="utf-8") as file:
                csv.DictWriter(file, COLUMNS).writerows(rows)
    with open(table, newline="", encoding="utf-8") as file:
        rows = [
            {k: (v if k in ("optimizer", "label", "rule") else float(v)) for k, v in r.items()}
            for r in csv.DictReader(file)
        ]
    (args.out / "dynamics.md").write_text(summary(rows), encoding="utf-8")
    if not plot(rows, args.out / "dynamics.png"):
        print("matplotlib is not installed; no dynamics.png written")


if __name__ == "__main__":
    main()
