"""The plugin's models, by name: every backbone and, for each, its ``<Backbone>_CKD`` student and
its balancing baselines ``<Backbone>_MDrop``, ``<Backbone>_OGMGE`` and ``<Backbone>_MMPareto``.

Backbones are found in ``recbole_ckd/model/backbones/``: every ``MultimodalRecommender``
subclass defined in a module there is registered under its class name, with its variants
derived from it (a backbone that ignores its modalities at inference is refused when a
variant is asked for).
"""

import importlib
import pkgutil

from recbole_ckd.model import backbones as _backbones
from recbole_ckd.model.balancing import VARIANT_MIXINS, make_balanced_model
from recbole_ckd.model.ckd import make_ckd_model
from recbole_ckd.model.multimodal import MultimodalRecommender


def _discover_backbones():
    found = []
    for info in sorted(pkgutil.iter_modules(_backbones.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{_backbones.__name__}.{info.name}")
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, MultimodalRecommender)
                and obj.__module__ == module.__name__
                and not obj.__dict__.get("abstract", False)
            ):
                found.append(obj)
    return tuple(found)


BACKBONES = _discover_backbones()
CKD_MODELS = tuple(make_ckd_model(backbone) for backbone in BACKBONES)
BALANCED_MODELS = tuple(make_balanced_model(backbone, suffix) for suffix in VARIANT_MIXINS for backbone in BACKBONES)
MODELS = {cls.__name__: cls for cls in BACKBONES + CKD_MODELS + BALANCED_MODELS}
globals().update({cls.__name__: cls for cls in BACKBONES})


def variant_backbone_name(name):
    """The backbone's name if ``name`` is a variant of one (``VBPR_CKD``, ``VBPR_MDrop`` -> ``VBPR``), else None."""
    backbone = getattr(MODELS.get(name), "backbone", None)
    return None if backbone is None else backbone.__name__


def ckd_backbone_name(name):
    """The backbone's name if ``name`` is a CKD student (``VBPR_CKD`` -> ``VBPR``), else None."""
    return variant_backbone_name(name) if getattr(MODELS.get(name), "is_ckd_student", False) else None

__all__ = ["BACKBONES", "BALANCED_MODELS", "CKD_MODELS", "MODELS", "MultimodalRecommender", "ckd_backbone_name",
           "variant_backbone_name"] + [cls.__name__ for cls in BACKBONES]
