"""The earlier name of :mod:`dualprop.blocks` (the blocks of a network of dyadic neurons and their VJPs),
kept so that code importing from it keeps working."""

from dualprop.blocks import *  # noqa: F403
from dualprop.blocks import __all__ as __all__
