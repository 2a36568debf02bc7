"""Model, trainer and dataset lookup: the plugin first, RecBole after."""

from recbole.data import create_dataset as recbole_create_dataset
from recbole.utils import ModelType
from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_ckd import model as plugin_models
from recbole_ckd.data.dataset import MultimodalDataset
from recbole_ckd.model.ckd import ckd_refusal
from recbole_ckd.trainer import with_safe_checkpoints


def get_model(name):
    """The model class called ``name``: a plugin model if there is one, else RecBole's."""
    model_class = plugin_models.MODELS.get(name)
    backbone = getattr(model_class, "backbone", None)
    if backbone is not None and not backbone.ranks_with_modalities:
        # refuse before any data is read; models that do not declare it are checked when built
        raise ValueError(ckd_refusal(backbone.__name__, "any"))
    if model_class is not None:
        return model_class
    try:
        return recbole_get_model(name)
    except (ValueError, ModuleNotFoundError) as err:
        # RecBole's search ends in its exlib models, whose import needs lightgbm / xgboost
        known = ", ".join(sorted(plugin_models.MODELS))
        raise ValueError(
            f"Unknown model '{name}': not a recbole-ckd model ({known}) and not a RecBole model ({err})."
        ) from None


def get_trainer(model_type, model_name):
    """The trainer of a plugin model, or RecBole's trainer with the plugin's checkpoints."""
    model_class = plugin_models.MODELS.get(model_name)
    if model_class is not None:
        return model_class.trainer_class()
    return with_safe_checkpoints(recbole_get_trainer(model_type, model_name))


def create_dataset(config):
    """The multimodal dataset for general recommenders; RecBole's own dataset otherwise.

    Modality files are read only for models that use them, so BPR or LightGCN run on any
    interaction file.
    """
    if config["MODEL_TYPE"] != ModelType.GENERAL:
        return recbole_create_dataset(config)
    uses_modalities = getattr(config.model_class, "uses_modalities", False)
    return MultimodalDataset(config, load_modalities=uses_modalities)
