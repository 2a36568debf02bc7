"""Model, trainer and dataset lookup: the plugin first, RecBole after."""

import difflib
import importlib
from pathlib import Path

from recbole.utils import ModelType
from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_ckd import model as plugin_models
from recbole_ckd.data.dataset import MultimodalDataset
from recbole_ckd.errors import ConfigError
from recbole_ckd.model.balancing import (
    GradientModulationMixin,
    balancing_refusal,
    modulation_refusal,
    untrained_refusal,
)
from recbole_ckd.model.ckd import ckd_refusal
from recbole_ckd.trainer import CKDTrainer, ResumableTrainer, with_safe_checkpoints


def model_names():
    """Every model name: the plugin's, then RecBole's (each has a properties file)."""
    recbole_models = Path(__import__("recbole").__file__).parent / "properties" / "model"
    return sorted(plugin_models.MODELS) + sorted(p.stem for p in recbole_models.glob("*.yaml"))


def canonical_model_name(name):
    """``name`` as its model is spelt (``bpr`` is BPR); a spelling of several models is refused."""
    names = model_names()
    if name in names:
        return name
    same = sorted({n for n in names if n.lower() == str(name).lower()})
    if len(same) > 1:
        raise ConfigError(f"Model '{name}' (--model / --models) names several models: did you mean {' or '.join(same)}?")
    return same[0] if same else name


def model_refusal(name):
    """Why the plugin's variant ``name`` cannot be built (its backbone declares what the variant
    needs missing), or None. Checked before any data is read; models that do not declare it are
    checked when built."""
    model_class = plugin_models.MODELS.get(name)
    backbone = getattr(model_class, "backbone", None)
    if backbone is None:
        return None
    if not backbone.trains:
        return untrained_refusal(name, backbone.__name__)
    if not backbone.ranks_with_modalities:
        if getattr(model_class, "is_ckd_student", False):
            return ckd_refusal(backbone.__name__, "any")
        return balancing_refusal(name, backbone.__name__)
    if issubclass(model_class, GradientModulationMixin) and not backbone.has_modality_parameters:
        return modulation_refusal(name, backbone.__name__)
    return None


def get_model(name):
    """The model class called ``name`` (in any case): a plugin model if there is one, else RecBole's."""
    name = canonical_model_name(name)
    model_class = plugin_models.MODELS.get(name)
    refusal = model_refusal(name)
    if refusal is not None:
        raise ConfigError(refusal)
    if model_class is not None:
        return model_class
    try:
        return recbole_get_model(name)
    except (ValueError, ModuleNotFoundError, AttributeError):
        # RecBole's search ends in its exlib models, whose import needs lightgbm / xgboost: not the cause
        pass
    close = difflib.get_close_matches(name, model_names(), n=1, cutoff=0.6)
    raise ConfigError(
        f"Unknown model '{name}' (--model / --models): " + (f"did you mean {close[0]}? " if close else "")
        + f"recbole-ckd's models are {', '.join(sorted(plugin_models.MODELS))}; any RecBole model works too (e.g. BPR, LightGCN)."
    )


def get_trainer(model_type, model_name):
    """The trainer of a model, chosen by what its class declares: a CKD student trains in two stages
    (teachers, then the student), the plugin's other models resume from their checkpoints, and
    RecBole's models get RecBole's trainer with the plugin's checkpoints."""
    model_class = plugin_models.MODELS.get(model_name)
    if model_class is None:
        return with_safe_checkpoints(recbole_get_trainer(model_type, model_name))
    if getattr(model_class, "is_ckd_student", False):
        return CKDTrainer
    return ResumableTrainer


def create_dataset(config):
    """The multimodal dataset for general and traditional recommenders (BPR, Pop, ItemKNN: users and
    items only); RecBole's own dataset class otherwise.

    Modality files are read only for models that use them, so BPR or LightGCN run on any
    interaction file. Never RecBole's ``create_dataset``: it unpickles
    ``<checkpoint_dir>/<dataset>-<Class>.pth`` whenever such a file exists.
    """
    if config["MODEL_TYPE"] not in (ModelType.GENERAL, ModelType.TRADITIONAL):
        # RecBole's choice of class (create_dataset), without its pickle cache
        module = importlib.import_module("recbole.data.dataset")
        default = {ModelType.SEQUENTIAL: "SequentialDataset", ModelType.KNOWLEDGE: "KnowledgeBasedDataset"}
        name = config["model"] + "Dataset"
        return getattr(module, name if hasattr(module, name) else default.get(config["MODEL_TYPE"], "Dataset"))(config)
    uses_modalities = getattr(config.model_class, "uses_modalities", False)
    return MultimodalDataset(config, load_modalities=uses_modalities)
