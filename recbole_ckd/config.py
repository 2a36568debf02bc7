"""RecBole's Config, extended with the plugin's properties, model lookup and dataset formats."""

import os
from pathlib import Path

import yaml
from recbole.config import Config as RecBoleConfig

from recbole_ckd import compat

compat.apply()

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_DATASETS_DIR = PACKAGE_DIR / "datasets"

# MMRec's .inter header; its columns carry no RecBole type suffixes.
MMREC_FIELDS = {
    "USER_ID_FIELD": "userID",
    "ITEM_ID_FIELD": "itemID",
    "RATING_FIELD": "rating",
    "TIME_FIELD": "timestamp",
    "split_field": "x_label",
}


def properties_dir():
    """The plugin's ``properties/``: top level of a checkout, or inside an installed wheel."""
    for candidate in (PACKAGE_DIR.parent / "properties", PACKAGE_DIR / "properties"):
        if (candidate / "overall.yaml").is_file() and (candidate / "model").is_dir():
            return candidate
    raise FileNotFoundError(
        f"recbole-ckd's properties/ was not found next to {PACKAGE_DIR}; reinstall the package."
    )


def resolve_config_file(path):
    """``path`` as given, or, when it names one of the plugin's own files (``properties/protocol/
    ckd_reference.yaml``) and no such file is here, that file of the installed package."""
    if os.path.isfile(path):
        return path
    parts = Path(path).parts
    shipped = properties_dir().joinpath(*parts[1:]) if parts and parts[0] == "properties" else None
    if shipped is not None and shipped.is_file():
        return str(shipped)
    raise FileNotFoundError(f"--config_files: {path} does not exist.")


def read_inter_header(path):
    """The columns of an interaction file's header, or None if there is no such file."""
    if not os.path.isfile(path):
        return None
    with open(path, "r", encoding="utf-8") as f:
        return f.readline().rstrip("\r\n").split("\t")


class Config(RecBoleConfig):
    """RecBole's Config plus the plugin's YAMLs, plugin-first model lookup and MMRec data.

    Priority, lowest first: RecBole's overall.yaml, the plugin's overall.yaml, RecBole's model
    and dataset YAMLs, the plugin's model YAML(s) and dataset YAML, then config files, the
    config dict and the command line. ``cmd_args`` replaces RecBole's own parsing of
    ``sys.argv`` (a list like ``["--learning_rate=0.01"]``; ``None`` means no command line),
    so a Config built inside a Ray worker or a library call never sees a foreign argv.
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None, cmd_args=None):
        self._cmd_args = list(cmd_args or [])
        config_file_list = [resolve_config_file(path) for path in config_file_list or []] or None
        super().__init__(model, dataset, config_file_list, config_dict)

    def _load_cmd_line(self):
        cmd_config_dict = {}
        for arg in self._cmd_args:
            if not arg.startswith("--") or "=" not in arg:
                raise ValueError(f"Command-line argument {arg!r} is not of the form --key=value.")
            key, value = arg[2:].split("=", 1)
            if key in cmd_config_dict and cmd_config_dict[key] != value:
                raise ValueError(f"--{key} is given twice with different values.")
            cmd_config_dict[key] = value
        return self._convert_config_dict(cmd_config_dict)

    def _get_model_and_dataset(self, model, dataset):
        from recbole_ckd.registry import get_model

        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise KeyError("Give the model: --model=NAME, 'model:' in a config file, or Config(model=...).")
        if isinstance(model, str):
            model = get_model(model)
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
            if dataset is None:
                raise KeyError("Give the dataset: --dataset=NAME, 'dataset:' in a config file, or Config(dataset=...).")
        return model.__name__, model, dataset

    def _read_yaml(self, path):
        with open(path, "r", encoding="utf-8") as f:
            return yaml.load(f.read(), Loader=self.yaml_loader) or {}

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
        for name in getattr(model_class, "config_names", lambda: [model])():
            path = props / "model" / f"{name}.yaml"
            if path.is_file():
                self.internal_config_dict.update(self._read_yaml(path))
        path = props / "dataset" / f"{dataset}.yaml"
        if path.is_file():
            dataset_dict = self._read_yaml(path)
            self.internal_config_dict.update(dataset_dict)
            self.parameters["Dataset"] += [k for k in dataset_dict if k not in self.parameters["Dataset"]]

    def _set_default_parameters(self):
        super()._set_default_parameters()
        final = self.final_config_dict
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
        elif all(":" in column for column in header):
            final["data_format"] = "atomic"
            # a split column in an atomic file must be loaded for the split to be honoured
            load_col = final.get("load_col") or {}
            names = [column.split(":")[0] for column in header]
            if final["split_field"] in names and "inter" in load_col and final["split_field"] not in load_col["inter"]:
                load_col["inter"] = list(load_col["inter"]) + [final["split_field"]]
        else:
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
            values.update(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    values.setdefault("data_path", "dataset/")
    for arg in cmd_args:
        key, value = arg[2:].split("=", 1)
        values[key] = yaml.safe_load(value)
    return values
