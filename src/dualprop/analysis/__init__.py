"""Analysis tools: gradient angles, spectral norms, Lipschitz estimates and adversarial attacks."""

from dualprop.spectral import SpectralNormEstimator, layer_spectral_norms, product_bound, spectral_norm

from .angle_log import GradientAngleLog
from .attacks import adversarial_accuracy, fgsm, pgd
from .lipschitz import LipschitzEstimate, empirical_lipschitz, eval_mode

__all__ = [
    "GradientAngleLog",
    "LipschitzEstimate",
    "SpectralNormEstimator",
    "adversarial_accuracy",
    "empirical_lipschitz",
    "eval_mode",
    "fgsm",
    "layer_spectral_norms",
    "pgd",
    "product_bound",
    "spectral_norm",
]
