"""The plugin's models, by name: every backbone and, for each, its ``<Backbone>_CKD`` student.

Backbones are found in ``recbole_ckd/model/backbones/``: every ``MultimodalRecommender``
subclass defined in a module there is registered under its class name, with a CKD student
``<Name>_CKD`` derived from it (a backbone that ignores its modalities at inference is
refused when that student is built).
"""

import importlib
import pkgutil

from recbole_ckd.model import backbones as _backbones
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
MODELS = {cls.__name__: cls for cls in BACKBONES + CKD_MODELS}
globals().update({cls.__name__: cls for cls in BACKBONES})


def ckd_backbone_name(name):
    """The backbone's name if ``name`` is a CKD student (``VBPR_CKD`` -> ``VBPR``), else None."""
    backbone = getattr(MODELS.get(name), "backbone", None)
    return None if backbone is None else backbone.__name__

__all__ = ["BACKBONES", "CKD_MODELS", "MODELS", "MultimodalRecommender", "ckd_backbone_name"] + [cls.__name__ for cls in BACKBONES]
