"""recbole-ckd: multimodal recommendation and Counterfactual Knowledge Distillation for RecBole."""

from recbole_ckd import compat

compat.apply()

__version__ = "0.1.0"
