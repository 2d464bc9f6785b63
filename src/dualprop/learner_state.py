"""What a Learner's state dict holds besides parameters and buffers, and the keys of its earlier layouts.

* ``noise_generator_{device}``: the state of the compartment-noise generator of each device used, and
  ``order_generator`` that of the random schedule's generator, so that a resumed noisy or asynchronous run
  draws what the uninterrupted one would have drawn.
* Version 1 (before the feedback weights and the damping became child modules) kept the Kolen–Pollack
  weights as ``feedback_weights.{i}`` and the damped-DP vectors as ``spectral_vector_{k}_{c}``; version 2
  keeps them as ``kolen_pollack.weights.{i}`` and ``damping.vector_{k}_{c}``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dualprop.damping import SpectralDamping, vector_name
from dualprop.hardware import CompartmentPerturbation

NOISE_GENERATOR = "noise_generator_"
ORDER_GENERATOR = "order_generator"


def generator_states(
    perturbation: CompartmentPerturbation, order_generator: torch.Generator | None
) -> dict[str, Tensor]:
    """The generators' states, by their names in the state dict (without prefix)."""
    states = {
        f"{NOISE_GENERATOR}{str(device).replace(':', '_')}": state
        for device, state in perturbation.generator_states().items()
    }
    if order_generator is not None:
        states[ORDER_GENERATOR] = order_generator.get_state()
    return states


def restore_generators(
    state_dict: dict[str, Any],
    prefix: str,
    perturbation: CompartmentPerturbation,
    order_generator: torch.Generator | None,
) -> list[str]:
    """Continue the generators saved in ``state_dict`` under ``prefix``; returns the keys it used."""
    used = []
    for key, value in state_dict.items():
        name = key[len(prefix) :]
        if not key.startswith(prefix) or "." in name:
            continue
        if name.startswith(NOISE_GENERATOR):
            perturbation.set_generator_state(torch.device(name[len(NOISE_GENERATOR) :].replace("_", ":")), value)
            used.append(key)
        elif name == ORDER_GENERATOR and order_generator is not None:
            order_generator.set_state(value.cpu())
            used.append(key)
    return used


def upgrade_version_1(state_dict: dict[str, Any], prefix: str, damping: SpectralDamping | None) -> None:
    """Rename the version-1 keys under ``prefix`` in place to those of version 2; a damped-DP vector that a
    version-1 Learner had not yet made (before its first step) is taken as the current, empty one."""
    for key in [key for key in state_dict if key.startswith(prefix)]:
        name = key[len(prefix) :]
        if name.startswith("feedback_weights."):
            state_dict[f"{prefix}kolen_pollack.weights.{name.split('.', 1)[1]}"] = state_dict.pop(key)
        elif name.startswith("spectral_vector_"):
            k, c = name[len("spectral_vector_") :].split("_")
            state_dict[f"{prefix}damping.{vector_name(int(k), int(c))}"] = state_dict.pop(key)
    if damping is not None:
        for name, buffer in damping.named_buffers():
            state_dict.setdefault(f"{prefix}damping.{name}", buffer)


class LearnerState(nn.Module):
    """The state-dict layout of a :class:`dualprop.learner.Learner`, its base class: besides parameters and
    buffers the generators' states, and states of version 1 (or of no version) taken in the current layout."""

    _version = 2  # 1: feedback weights as feedback_weights.{i}, damping vectors as spectral_vector_{k}_{c}

    perturbation: CompartmentPerturbation
    _order_generator: torch.Generator | None
    damping: SpectralDamping | None

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, state in generator_states(self.perturbation, self._order_generator).items():
            destination[prefix + name] = state

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        if local_metadata.get("version", 1) < 2:
            upgrade_version_1(state_dict, prefix, self.damping)
        generators = restore_generators(state_dict, prefix, self.perturbation, self._order_generator)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        unexpected_keys[:] = [key for key in unexpected_keys if key not in generators]
