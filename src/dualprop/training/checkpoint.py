"""Checkpoints: written atomically, read back with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain containers only (the Learner's ``state_dict`` — the model
under ``model.``, feedback weights and spectral-norm estimates beside it — the optimizer state, counters,
the best validation metric and the random-number-generator states), so the safe loader accepts it.
Writing goes to a temporary file in the same directory, which is flushed, fsynced and then renamed
over the target with ``os.replace``: a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualprop.atomic import atomic_write

RESUME_ENTRIES = {
    "learner": dict,
    "optimizer": dict,
    "epoch": int,
    "global_step": int,
    "best_val_acc": float,
    "best_epoch": int,
    "elapsed": float,
    "rng": dict,
    "started": str,
}
"""What ``checkpoint-last.pt`` holds for a run to continue, and the type of each entry."""
RNG_ENTRIES = ("torch", "numpy", "python")


class CheckpointError(Exception):
    """A checkpoint file is missing or cannot be read as a dualprop checkpoint."""


def atomic_save(payload: dict[str, Any], path: str | Path) -> None:
    """``torch.save(payload)`` to ``path`` so that ``path`` is never left partially written."""
    atomic_write(path, lambda file: torch.save(payload, file))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with the safe loader (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"checkpoint {path} cannot be read: {reason}") from None
    if isinstance(payload, dict) and "learner" not in payload and isinstance(payload.get("model"), dict):
        payload = _from_model_layout(payload)
    if not isinstance(payload, dict) or not isinstance(payload.get("learner"), dict):
        raise CheckpointError(f"checkpoint {path} is not a dualprop checkpoint")
    return payload


def load_resumable_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint that holds every entry of :data:`RESUME_ENTRIES` with its type (numbers as numbers) and
    the three generator states; ``CheckpointError`` naming the file and the first entry missing or wrong."""
    state = load_checkpoint(path, map_location)
    for key, kind in RESUME_ENTRIES.items():
        value = state.get(key)
        fits = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if not fits or isinstance(value, bool):
            found = "has none" if key not in state else f"has a {type(value).__name__}"
            raise CheckpointError(
                f"checkpoint {path} cannot be resumed: its {key!r} entry should be a {kind.__name__} but {found}"
            )
    missing = [key for key in RNG_ENTRIES if key not in state["rng"]]
    if missing:
        raise CheckpointError(f"checkpoint {path} cannot be resumed: its random-number states lack {missing[0]!r}")
    return state


def _from_model_layout(payload: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of the earlier layout — the model's ``state_dict`` under ``model`` and the Kolen–Pollack
    weights as a list under ``feedback`` — in the Learner layout, so earlier runs still resume."""
    learner = {f"model.{key}": value for key, value in payload.pop("model").items()}
    for index, weight in enumerate(payload.pop("feedback", None) or []):
        learner[f"feedback_weights.{index}"] = weight
    return {**payload, "learner": learner}


def state_mismatch(error: RuntimeError) -> str:
    """The telling line of ``load_state_dict``'s error (a size mismatch, missing or unexpected keys), short."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if line.startswith(("size mismatch", "Missing key", "Unexpected key"))]
    line = (telling or lines or ["the entries differ"])[0]
    return line if len(line) <= 200 else line[:199] + "…"


def model_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model's own ``state_dict`` inside a checkpoint's Learner state (its ``model.`` entries)."""
    prefix = "model."
    return {key[len(prefix) :]: value for key, value in checkpoint["learner"].items() if key.startswith(prefix)}


def rng_state() -> dict[str, Any]:
    """The states of torch's, numpy's and Python's global generators as tensors and plain values."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_py = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {
            "version": version,
            "internal": list(internal),
            "gauss": gauss_py if gauss_py is None else float(gauss_py),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by :func:`rng_state`; ``ValueError`` when ``state`` is not such a state."""
    try:
        _set_rng_state(state)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as error:
        raise ValueError(f"not a saved random-number state: {(str(error).splitlines() or [''])[0]}") from None


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
