"""The plugin's models, by name: every backbone and, for each, its ``<Backbone>_CKD`` student."""

from recbole_ckd.model.backbones.mmgcn import MMGCN
from recbole_ckd.model.backbones.vbpr import VBPR
from recbole_ckd.model.ckd import make_ckd_model
from recbole_ckd.model.multimodal import MultimodalRecommender

BACKBONES = (VBPR, MMGCN)
CKD_MODELS = tuple(make_ckd_model(backbone) for backbone in BACKBONES)
MODELS = {cls.__name__: cls for cls in BACKBONES + CKD_MODELS}

__all__ = ["BACKBONES", "CKD_MODELS", "MODELS", "MultimodalRecommender", "MMGCN", "VBPR"]
