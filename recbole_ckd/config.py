"""RecBole's Config, extended with the plugin's properties, model lookup and dataset formats."""

import ast
import contextlib
import difflib
import functools
import math
import numbers
import os
from pathlib import Path

from recbole.config import Config as RecBoleConfig
from recbole.utils import ModelType

from recbole_ckd import compat
from recbole_ckd.errors import ConfigError
from recbole_ckd.settings_files import (
    SHIPPED_DATASETS_DIR,
    SafeYamlLoader,
    model_property_files,
    properties_dir,
    read_yaml,
    resolve_config_file,
)

compat.apply()

# MMRec's .inter header; its columns carry no RecBole type suffixes.
MMREC_FIELDS = {
    "USER_ID_FIELD": "userID",
    "ITEM_ID_FIELD": "itemID",
    "RATING_FIELD": "rating",
    "TIME_FIELD": "timestamp",
    "split_field": "x_label",
}


_LITERAL_TYPES = (str, int, float, list, tuple, dict, bool, type(None))


def parse_literal(text):
    """A config value given as text (command line, config dict): a Python literal (number,
    boolean, None, list, dict, string), else the text itself. Never evaluated: RecBole's
    ``eval()`` would run any code in the value."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return {"true": True, "false": False}.get(text.lower(), text)  # RecBole accepts any case
    return value if isinstance(value, _LITERAL_TYPES) else text


def read_inter_header(path):
    """The columns of an interaction file's header, or None if there is no such file."""
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:  # the first line only: the rest is checked, line by line, when the data is read
        line = f.readline()
    try:
        return line.decode("utf-8").rstrip("\r\n").split("\t")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}, line 1: not UTF-8 text; save the file as UTF-8.") from None


class Config(RecBoleConfig):
    """RecBole's Config plus the plugin's YAMLs, plugin-first model lookup and MMRec data.

    Priority, lowest first: RecBole's overall.yaml, the plugin's overall.yaml, RecBole's model
    and dataset YAMLs, the plugin's model YAML(s) (each followed by its settings for the dataset,
    ``model/<Model>/<dataset>.yaml``, where there is one) and dataset YAML, then config files, the
    config dict and the command line. ``cmd_args`` replaces RecBole's own parsing of
    ``sys.argv`` (a list like ``["--learning_rate=0.01"]``; ``None`` means no command line),
    so a Config built inside a Ray worker or a library call never sees a foreign argv.
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None, cmd_args=None):
        self._cmd_args = list(cmd_args or [])
        config_file_list = [resolve_config_file(path) for path in config_file_list or []] or None
        super().__init__(model, dataset, config_file_list, dict(config_dict) if config_dict else None)

    def _set_train_neg_sample_args(self):
        with recbole_refusals():
            super()._set_train_neg_sample_args()

    def _set_eval_neg_sample_args(self, phase):
        with recbole_refusals():
            super()._set_eval_neg_sample_args(phase)

    def _build_yaml_loader(self):
        return SafeYamlLoader

    def _convert_config_dict(self, config_dict):
        for key, value in config_dict.items():
            if isinstance(value, str):
                config_dict[key] = parse_literal(value)
        return config_dict

    def _load_config_files(self, file_list):
        values = {}
        for path in file_list or []:
            values.update(read_yaml(path))
        return values

    def _load_cmd_line(self):
        cmd_config_dict = {}
        for arg in self._cmd_args:
            if not arg.startswith("--") or "=" not in arg:
                raise ConfigError(f"Command-line argument {arg!r} is not of the form --key=value.")
            key, value = arg[2:].split("=", 1)
            if key in cmd_config_dict and cmd_config_dict[key] != value:
                raise ConfigError(f"--{key} is given twice with different values.")
            cmd_config_dict[key] = value
        return self._convert_config_dict(cmd_config_dict)

    def _get_final_config_dict(self):
        self._check_known_keys()
        return super()._get_final_config_dict()

    def _check_known_keys(self):
        """Refuse a key that nothing reads (a typo would be ignored and still change the run key)."""
        extra = self.external_config_dict.get("extra_config_keys") or []
        if not isinstance(extra, (list, tuple)) or not all(isinstance(k, str) for k in extra):
            raise ConfigError(f"extra_config_keys must be a list of key names, e.g. ['my_key'], got {extra!r}.")
        known = known_config_keys() | set(self.internal_config_dict) | set(self.file_config_dict) | set(extra)
        sources = [("the command line", self.cmd_config_dict, "--{}=..."), ("the config dict", self.variable_config_dict, "{}")]
        for where, values, spelling in sources:
            for key in values:
                if key in known:
                    continue
                raise unknown_key(key, known, spelling.format(key), where)

    def _get_model_and_dataset(self, model, dataset):
        from recbole_ckd.registry import get_model

        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise ConfigError("Give the model: --model=NAME, 'model:' in a config file, or Config(model=...).")
        if isinstance(model, str):
            model = get_model(model)
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
            if dataset is None:
                raise ConfigError("Give the dataset: --dataset=NAME, 'dataset:' in a config file, or Config(dataset=...).")
        return model.__name__, model, dataset

    def _read_yaml(self, path):
        return read_yaml(path)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        props = properties_dir()
        recbole_props = Path(__import__("recbole").__file__).parent / "properties"
        # Keys that RecBole's model or dataset YAMLs set win over the plugin's overall.yaml.
        specific = {}
        for path in (recbole_props / "model" / f"{model}.yaml", recbole_props / "dataset" / f"{dataset}.yaml"):
            if path.is_file():
                specific.update(self._read_yaml(path))
        for key, value in self._read_yaml(props / "overall.yaml").items():
            if key not in specific:
                self.internal_config_dict[key] = value
        for path in model_property_files(props, getattr(model_class, "config_names", lambda: [model])(), dataset):
            self.internal_config_dict.update(self._read_yaml(path))
        path = props / "dataset" / f"{dataset}.yaml"
        if path.is_file():
            dataset_dict = self._read_yaml(path)
            self.internal_config_dict.update(dataset_dict)
            self.parameters["Dataset"] += [k for k in dataset_dict if k not in self.parameters["Dataset"]]

    def _set_default_parameters(self):
        validate(self)  # before RecBole reads the values (it fails on bad ones with tracebacks of its own)
        with recbole_refusals():
            super()._set_default_parameters()
        final = self.final_config_dict
        check_valid_metric(final)
        data_path = final["data_path"]
        inter_name = f"{self.dataset}.inter"
        shipped = SHIPPED_DATASETS_DIR / self.dataset
        if not os.path.isfile(os.path.join(data_path, inter_name)) and (shipped / inter_name).is_file():
            data_path = str(shipped)
        # absolute, so that a run started elsewhere (a Ray worker) reads the same files
        final["data_path"] = os.path.abspath(data_path)
        final["checkpoint_dir"] = os.path.abspath(final["checkpoint_dir"])
        header = read_inter_header(os.path.join(final["data_path"], inter_name))
        if header is None:
            final["data_format"] = None
        elif any(":" in column for column in header):  # atomic; a column without its type is refused when read
            final["data_format"] = "atomic"
            # a split column in an atomic file must be loaded for the split to be honoured
            load_col = final.get("load_col") or {}
            names = [column.split(":")[0] for column in header]
            if final["split_field"] in names and "inter" in load_col and final["split_field"] not in load_col["inter"]:
                load_col["inter"] = list(load_col["inter"]) + [final["split_field"]]
        else:
            if final["MODEL_TYPE"] not in (ModelType.GENERAL, ModelType.TRADITIONAL):
                raise ConfigError(
                    f"{final['model']} is a {final['MODEL_TYPE'].name.lower()} model of RecBole, which reads RecBole's "
                    f"atomic files (typed headers such as user_id:token); {inter_name} is in MMRec's format, which "
                    "serves the user-item models (recbole-ckd's, and RecBole's general and traditional ones, e.g. "
                    "BPR, LightGCN, Pop); give it atomic files, or choose such a model.")
            final["data_format"] = "mmrec"
            final.update(MMREC_FIELDS)
            final["load_col"] = None


def dataset_properties(dataset, cmd_args=()):
    """The plugin's data keys for ``dataset`` (overall.yaml, its dataset YAML, ``--key=value``
    overrides), without building a full Config: what ``--download`` needs."""
    props = properties_dir()
    values = {}
    for path in (props / "overall.yaml", props / "dataset" / f"{dataset}.yaml"):
        if path.is_file():
            values.update(read_yaml(path))
    values.setdefault("data_path", "dataset/")
    for arg in cmd_args:
        key, value = arg[2:].split("=", 1)
        if key not in known_config_keys():
            raise unknown_key(key, known_config_keys(), f"--{key}=...", "the command line")
        values[key] = parse_literal(value)
    return values


def check_valid_metric(final):
    """Refuse a ``valid_metric`` that the evaluation does not compute (RecBole would fail after the
    first epoch): one of ``metrics``, at one of the ``topk`` cut-offs for a ranking metric."""
    from recbole.evaluator.base_metric import TopkMetric
    from recbole.evaluator.register import metrics_dict

    metrics = [m.lower() for m in ([final["metrics"]] if isinstance(final["metrics"], str) else final["metrics"])]
    topk = final["topk"] if isinstance(final["topk"], list) else [final["topk"]]
    computed = [f"{m}@{k}" if issubclass(metrics_dict[m], TopkMetric) else m for m in metrics
                for k in (topk if issubclass(metrics_dict[m], TopkMetric) else [None])]
    if final["valid_metric"].lower() not in computed:
        raise ConfigError(f"config key valid_metric: {final['valid_metric']!r} is not computed; give one of "
                          f"{', '.join(computed)} (or add it to metrics / topk).")


def check_against_data(config, dataset):
    """Refuse settings that only the data shows to be impossible, before anything is trained."""
    n_items = int(dataset.item_num) - 1  # id 0 is padding
    topk = config["topk"] if isinstance(config["topk"], list) else [config["topk"]]
    if max(topk) > n_items:
        raise ConfigError(f"config key topk: {config['topk']!r} asks for more items than the dataset "
                          f"{config['dataset']} has ({n_items}); give cut-offs of at most {n_items}.")


# ----------------------------------------------------------------------------- known keys
def unknown_key(key, known, spelling, where):
    """The refusal of a key nothing reads, with the closest known one."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    return ConfigError(f"unknown config key {spelling} (from {where}): {hint}A key of your own must be declared: "
                       f"extra_config_keys: [{key}] in a config file, or --extra_config_keys=\"['{key}']\".")


# Keys that RecBole's or the plugin's code reads or sets without a YAML default.
_CODE_KEYS = {"model", "dataset", "config_files", "data_format", "local_rank", "nproc",
              "world_size", "offset", "ip", "port", "single_spec", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type",
              "device", "train_neg_sample_args", "valid_neg_sample_args", "test_neg_sample_args", "tensorboard"}


@functools.lru_cache(maxsize=None)
def known_config_keys():
    """Every key a property file of RecBole or of the plugin sets (overall, model, dataset, protocol
    and RecBole's quick-start YAMLs), RecBole's argument lists, and the keys code reads."""
    from recbole.utils import argument_list

    keys = set(_CODE_KEYS)
    for name in ("general_arguments", "training_arguments", "evaluation_arguments", "dataset_arguments"):
        keys.update(getattr(argument_list, name, []))
    recbole_props = Path(__import__("recbole").__file__).parent / "properties"
    for root in (recbole_props, properties_dir()):
        for path in sorted(root.rglob("*.yaml")):
            keys.update(read_yaml(path))
    return frozenset(keys)


# ----------------------------------------------------------------------------- value checks
def _is_number(value):
    # numbers.Real: numpy scalars from a searcher too
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value):
    return _is_number(value) and float(value).is_integer()


def _number(low=None, high=None, low_open=False, integer=False, optional=False):
    """A check for a number in a range: ``(accepts(value), "allowed values")``."""
    kind = "an integer" if integer else "a number"
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"<= {high}")
    text = kind + (" " + " and ".join(bounds) if bounds else "") + (", or ~" if optional else "")

    def accepts(value):
        if value is None:
            return optional
        if not (_is_integer(value) if integer else _is_number(value)):
            return False
        if low is not None and (value <= low if low_open else value < low):
            return False
        return high is None or value <= high

    accepts.integer = integer  # validate() turns an accepted 2.0 (a searcher's quniform, --epochs=2.0) into 2
    return accepts, text


def _boolean():
    return (lambda value: isinstance(value, bool)), "True or False"


def _one_of(*choices):
    return (lambda value: value in choices), "one of " + ", ".join(repr(c) for c in choices)


def _name_among(*names):
    """A case-insensitive name: RecBole lowers these, and silently falls back on an unknown one."""
    return (lambda value: isinstance(value, str) and value.lower() in names), "one of " + ", ".join(names)


def _exactly(expected, why):
    return (lambda value: value == expected), f"{expected!r} ({why})"


def _pair(check_low, check_order, text):
    def accepts(value):
        return (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)
                and check_low(value[0]) and check_order(*value))

    return accepts, text


def _topk(value):
    values = value if isinstance(value, (list, tuple)) else [value]
    return bool(values) and all(_is_integer(v) and v >= 1 for v in values)


NO_PICKLES = "recbole-ckd never writes or loads pickles of data"
# key -> (accepts(value), the allowed values in words); checked on every Config, before any data is read
CONFIG_RULES = {
    "learning_rate": _number(0, low_open=True),
    "teacher_learning_rate": _number(0, low_open=True, optional=True),
    "teacher_reg_weight": _number(0, optional=True),
    "weight_decay": _number(0),
    "epochs": _number(1, integer=True),
    "train_batch_size": _number(1, integer=True),
    "eval_batch_size": _number(1, integer=True),
    "eval_step": _number(1, integer=True),
    "stopping_step": _number(0, integer=True),
    "seed": _number(0, 2**32 - 1, integer=True),  # numpy's seeds
    "reg_weight": _number(0),
    "kd_weight": _number(0),
    "gd_weight": _number(0),
    "kd_temperature": _number(0, low_open=True),
    "gd_samples": _number(1, integer=True),
    "cf_clamp": _pair(lambda low: low >= 0, lambda low, high: low < high, "[low, high] with 0 <= low < high"),
    "ckd_specific": _boolean(),
    "ckd_generic": _boolean(),
    "ckd_weighting": _one_of("counterfactual", "teacher_gap", "uniform"),
    "mdrop_prob": _number(0, 1),
    "mdrop_unit": _one_of("triple", "batch"),
    "mdrop_rule": _one_of("independent", "one_of"),
    "ogm_alpha": _number(0),
    "ogm_noise": _boolean(),
    "ogm_scope": _one_of("encoders", "all"),
    "ogm_epochs": _pair(lambda start: _is_integer(start) and start >= 0, lambda start, end: _is_integer(end) and start <= end,
                        "[first, last] epochs, integers with 0 <= first <= last"),
    "mg": _boolean(),
    "alpha1": _number(0),
    "alpha2": _number(0),
    "learning_rate_scheduler": (lambda value: value is None or _pair(lambda a: a > 0, lambda a, b: b > 0, "")[0](value),
                                "[factor, epochs] with both > 0 (e.g. [0.96, 50]), or ~"),
    "learner": _name_among("adam", "adamw", "sgd", "adagrad", "rmsprop", "sparse_adam"),
    "state": (lambda v: v is None or _name_among("info", "debug", "warning", "error", "critical")[0](v),
              "one of info, debug, warning, error, critical"),
    "embedding_size": _number(1, integer=True),
    # the models' sizes and counts are integers (a sweep's quniform gives floats); each model checks its counts' ranges
    **dict.fromkeys(("latent_dim", "feat_embed_dim"), _number(1, integer=True)),
    "modality_embedding_size": _number(1, integer=True, optional=True),
    **dict.fromkeys(("n_layers", "n_ui_layers", "n_mm_layers", "n_routing", "id_layers", "knn_k", "user_knn_k"),
                    _number(integer=True)),
    "worker": _number(0, integer=True),
    "checkpoint_dir": (lambda v: isinstance(v, str) and bool(v.strip()), "a folder path"),
    "data_path": (lambda v: isinstance(v, str) and bool(v.strip()), "a folder path"),
    "numerical_features": (lambda v: isinstance(v, list) and all(isinstance(f, str) for f in v),
                           "a list of field names, e.g. [] or ['price']"),
    "topk": (_topk, "an integer >= 1 or a list of them"),
    "metrics": (lambda v: isinstance(v, str) or (isinstance(v, list) and bool(v) and all(isinstance(m, str) for m in v)),
                "a metric name or a list of them, e.g. ['Recall', 'NDCG']"),
    "valid_metric": (lambda v: isinstance(v, str), "a metric name with its cut-off, e.g. Recall@20"),
    "eval_args": (lambda v: isinstance(v, dict), "a mapping, e.g. {split: {RS: [0.8, 0.1, 0.1]}, order: RO}"),
    "test_masking": _one_of("train", "train_valid"),
    "train_sampler": _one_of("interactions", "user_uniform"),
    "device_sampling": _boolean(),
    "retrain_teachers": _boolean(),
    "resume": _boolean(),
    "reproducibility": _boolean(),
    "show_progress": _boolean(),
    "use_gpu": _boolean(),
    "save_dataset": _exactly(False, NO_PICKLES),
    "save_dataloaders": _exactly(False, NO_PICKLES),
    "dataset_save_path": _exactly(None, NO_PICKLES),
    "dataloaders_save_path": _exactly(None, NO_PICKLES),
}


@contextlib.contextmanager
def recbole_refusals():
    """RecBole's own checks of config values (metric names, loss types, sampling arguments) as
    ConfigErrors: they are about what the user wrote."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, TypeError, NotImplementedError, RuntimeError) as err:
        raise ConfigError(f"RecBole refuses the config: {err}") from err


def validate(config):
    """Refuse a value outside its range, naming the key, the value and what is allowed; an integer
    given as an integral float (2.0) becomes that integer."""
    final = config.final_config_dict
    for key, (accepts, allowed) in CONFIG_RULES.items():
        if key in final and not accepts(final[key]):
            raise ConfigError(f"config key {key}: {final[key]!r} is not allowed; {key} must be {allowed}.")
        if key in final and getattr(accepts, "integer", False) and final[key] is not None:
            final[key] = int(final[key])
    mode = final.get("eval_args", {}).get("mode", "full")
    if any(m != "full" for m in (mode.values() if isinstance(mode, dict) else [mode])):
        raise ConfigError(f"config key eval_args: mode {mode!r} is not supported; recbole-ckd ranks every item "
                          "(mode: full), sampled evaluation is not implemented.")
    if final.get("ckd_specific") is False and final.get("ckd_generic") is False:
        raise ConfigError("config keys ckd_specific and ckd_generic are both False: nothing is distilled; keep one of "
                          "them, or set kd_weight: 0 for the plain backbone's objective.")
    if final.get("mg") is True and not _number(1, integer=True)[0](final.get("beta")):
        # only then: several RecBole models have a beta of their own (RecVAE, NAIS...)
        raise ConfigError(f"config key beta: {final.get('beta')!r} is not allowed with mg: True; beta (Mirror "
                          "Gradient mirrors every beta-th batch) must be an integer >= 1.")
    checkpoint_dir = final.get("checkpoint_dir")
    if isinstance(checkpoint_dir, str) and os.path.exists(checkpoint_dir) and not os.path.isdir(checkpoint_dir):
        raise ConfigError(f"config key checkpoint_dir: {checkpoint_dir} is a file; give a folder (it holds every checkpoint).")
    modalities = final.get("modalities")
    if modalities is not None and not (
        isinstance(modalities, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in modalities.items())
    ):
        raise ConfigError(f"config key modalities: {modalities!r} is not allowed; it must map names to .npy files, "
                          "e.g. {v: image_feat.npy, t: text_feat.npy}.")
    active = final.get("active_modalities")
    if active is not None and not (isinstance(active, (list, tuple)) and set(active) <= set(modalities or {})):
        raise ConfigError(f"config key active_modalities: {active!r} is not allowed; it must be ~ or a list of "
                          f"modalities among {sorted(modalities or {})}.")
