"""One training run through RecBole's machinery: its config, data, trainer and result record."""

import os
from logging import getLogger

from recbole.utils import init_seed

from recbole_ckd.compat import init_logger
from recbole_ckd.config import Config, check_against_data
from recbole_ckd.data.dataset import data_preparation
from recbole_ckd.errors import ConfigError, UserError
from recbole_ckd.registry import create_dataset, get_model, get_trainer
from recbole_ckd.reports import CODE_VERSION, dataset_statistics, training_protocol
from recbole_ckd.run_keys import config_key


def prepare(model=None, dataset=None, config_file_list=None, config_dict=None, cmd_args=None):
    """Config, data, model and trainer of a run, built through RecBole's machinery."""
    config = Config(model, dataset, config_file_list, config_dict, cmd_args=cmd_args)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)

    try:
        data = create_dataset(config)
    except UserError:
        raise
    except ValueError as err:  # RecBole's checks of keys that name fields (numerical_features, discretization)
        raise ConfigError(f"RecBole refuses the config for dataset {config['dataset']}: {err}") from err
    check_against_data(config, data)
    logger.info(data)
    train_data, valid_data, test_data = data_preparation(config, data)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    try:
        model_obj = get_model(config["model"])(config, train_data.dataset).to(config["device"])
    except ValueError as err:  # a model refuses its hyper-parameters (n_layers, dropout, ...) with ValueError
        raise ConfigError(f"{config['model']}: {err}") from err
    logger.info(model_obj)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model_obj)
    return config, (train_data, valid_data, test_data), trainer


def train_teachers(model, dataset, config_file_list=None, config_dict=None, cmd_args=None):
    """Stage 1 of a CKD model alone (the teachers, trained or taken from their cache)."""
    config, (train_data, valid_data, _), trainer = prepare(model, dataset, config_file_list, config_dict, cmd_args)
    if not hasattr(trainer, "prepare_teachers"):
        raise ConfigError(f"{config['model']} is not a CKD model; it has no teachers.")
    trainer.prepare_teachers(train_data, valid_data, show_progress=config["show_progress"])
    return trainer.checkpoint_dirs()


def run(model=None, dataset=None, config_file_list=None, config_dict=None, cmd_args=None, saved=True,
        callback_fn=None, evaluate_test=True):
    """Train ``model`` on ``dataset`` and evaluate it; returns a plain result record.

    The same function serves the command line, sweeps and leaderboards: only the config
    differs. ``cmd_args`` are ``--key=value`` overrides (highest priority). ``callback_fn(epoch,
    valid_score)`` is called after every validation; ``evaluate_test=False`` (a sweep trial)
    never touches the test set. Checkpoint paths in the record are relative to ``checkpoint_dir``,
    so a record means the same on every machine.
    """
    config, (train_data, valid_data, test_data), trainer = prepare(
        model, dataset, config_file_list, config_dict, cmd_args
    )
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"], callback_fn=callback_fn
    )
    test_result = None
    if evaluate_test:
        test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    result = {
        "model": config["model"],
        "dataset": config["dataset"],
        "seed": config["seed"],
        "test_masking": config["test_masking"],
        "training_protocol": training_protocol(config),
        "valid_metric": config["valid_metric"],
        "eval_step": config["eval_step"],
        "stopping_step": config["stopping_step"],
        "best_valid_score": float(best_valid_score),
        "valid_result": {k: float(v) for k, v in (best_valid_result or {}).items()},
        "test_result": {k: float(v) for k, v in (test_result or {}).items()},
        "checkpoint": os.path.relpath(trainer.saved_model_file, config["checkpoint_dir"]) if saved else None,
        "run_key": config_key(config),
        "code": CODE_VERSION,
        "dataset_statistics": dataset_statistics(train_data, valid_data, test_data),
    }
    if hasattr(trainer, "epoch_stats"):
        result["epoch_stats"] = trainer.epoch_stats
        result["checkpoints"] = {name: os.path.relpath(path, config["checkpoint_dir"])
                                 for name, path in trainer.checkpoint_dirs().items()}
    if hasattr(trainer, "teacher_origins"):
        result["teachers"] = dict(trainer.teacher_origins)
    if evaluate_test and hasattr(trainer, "mode_results"):  # each modality alone; CKD: and each teacher
        result["modes"] = trainer.mode_results(valid_data, test_data, load_best_model=saved)
    return result
