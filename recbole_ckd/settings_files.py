"""Where the plugin's settings files are (its ``properties/``, its shipped datasets) and how a
YAML settings file is read. Plain file reading: it imports nothing else of recbole-ckd but its errors."""

import os
import re
from pathlib import Path

import yaml

from recbole_ckd.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_DATASETS_DIR = PACKAGE_DIR / "datasets"


def properties_dir():
    """The plugin's ``properties/``: top level of a checkout, or inside an installed wheel."""
    for candidate in (PACKAGE_DIR.parent / "properties", PACKAGE_DIR / "properties"):
        if (candidate / "overall.yaml").is_file() and (candidate / "model").is_dir():
            return candidate
    raise FileNotFoundError(
        f"recbole-ckd's properties/ was not found next to {PACKAGE_DIR}; reinstall the package."
    )


def model_property_files(props, names, dataset):
    """The model YAMLs under the properties folder ``props`` of the models ``names``, in loading
    order: ``model/<name>.yaml``, then ``model/<name>/<dataset>.yaml`` (that model's settings for
    one dataset, e.g. the per-dataset best values its authors report), for each name; only the
    files that exist."""
    model_dir = Path(props) / "model"
    paths = [path for name in names for path in (model_dir / f"{name}.yaml", model_dir / name / f"{dataset}.yaml")]
    return [path for path in paths if path.is_file()]


def resolve_config_file(path):
    """``path`` as given, or, when it names one of the plugin's own files (``properties/protocol/
    ckd_reference.yaml``) and no such file is here, that file of the installed package."""
    if os.path.isfile(path):
        return path
    parts = Path(path).parts
    shipped = properties_dir().joinpath(*parts[1:]) if parts and parts[0] == "properties" else None
    if shipped is not None and shipped.is_file():
        return str(shipped)
    raise ConfigError(f"--config_files: {path} does not exist; give the path of a YAML file.")


class SafeYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only, never a Python object) with RecBole's float rule
    (``1e-3`` is a float, not a string), and without anchors and aliases (``&a``, ``*a``): a few
    lines of nested aliases expand to billions of values."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, "anchors and aliases (&name, *name) are not allowed; write "
                                              "the values out", event.start_mark)
        return super().compose_node(parent, index)


SafeYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def read_yaml(path):
    """The mapping in a YAML config file; a malformed file is a ConfigError naming it."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            values = yaml.load(f.read(), Loader=SafeYamlLoader)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}{line}: not valid YAML ({problem}); fix the file, or remove it from --config_files.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; a config file is YAML text.") from None
    except (ValueError, OverflowError, RecursionError) as err:  # a tagged or dated value out of range, deep nesting
        raise ConfigError(f"{path}: not valid YAML ({type(err).__name__}: {err}); fix the file, or remove it from "
                          "--config_files.") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file must be a YAML mapping of 'key: value' lines, got a {type(values).__name__}.")
    return values
