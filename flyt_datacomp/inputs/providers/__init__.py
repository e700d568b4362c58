"""The input-score providers, one module per family; importing this registers them all."""

from . import classifier, imported, models, neg_clip_loss, normsim, simple  # noqa: F401 - registration
from .base import PROVIDERS, FitContext, Option, Provider, parse_spec, register_provider

__all__ = ["PROVIDERS", "FitContext", "Option", "Provider", "parse_spec", "register_provider"]
