"""The plugin's models, by name."""

from recbole_ckd.model.backbones.vbpr import VBPR
from recbole_ckd.model.multimodal import MultimodalRecommender

MODELS = {cls.__name__: cls for cls in (VBPR,)}

__all__ = ["MODELS", "MultimodalRecommender", "VBPR"]
