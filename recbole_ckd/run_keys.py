"""Run keys: which config keys change what a run computes (a teacher, a student, an evaluation),
declared once, and the digests and folders derived from them (checkpoints, teacher caches,
leaderboard cells)."""

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from typing import NamedTuple


class LaterKey(NamedTuple):
    """A config key added after results were published: its ``legacy`` value (what the code
    computed before the key existed) and the ``variant`` whose models read it (``VBPR_MDrop``
    is a variant ``MDrop``; None: every model)."""

    legacy: object
    variant: object  # a variant suffix, or None


# Keys added after results were published (the CKD ablation switches, the balancing baselines'
# settings). One is left out of the run key where it cannot change what the run computes: at its
# legacy value, or in a model that does not read it. Cells cached before the key existed keep their
# run keys; any other value (a newer default included) enters the run key, so a cell computed under
# the old rule is never served as the new rule's result.
LATER_KEYS = {
    **{key: LaterKey(legacy, "CKD") for key, legacy in
       {"ckd_specific": True, "ckd_generic": True, "ckd_weighting": "counterfactual"}.items()},
    **{key: LaterKey(legacy, "MDrop") for key, legacy in
       {"mdrop_prob": 0.5, "mdrop_unit": "triple", "mdrop_rule": "one_of"}.items()},
    **{key: LaterKey(legacy, "OGMGE") for key, legacy in
       {"ogm_alpha": 0.1, "ogm_noise": True, "ogm_epochs": [0, 50], "ogm_scope": "all"}.items()},
    # a CKD model's teachers at their own L2 weight
    "teacher_reg_weight": LaterKey(None, "CKD"),
    # Mirror Gradient: every model's trainer reads it
    **{key: LaterKey(legacy, None) for key, legacy in {"mg": False, "alpha1": 1.0, "alpha2": 0.1, "beta": 3}.items()},
}
# Keys of the student only: changing them never changes a teacher (Mirror Gradient trains the teachers too).
CKD_KEYS = {"kd_weight", "gd_weight", "kd_temperature", "gd_samples", "cf_clamp", "teacher_learning_rate"} | {
    key for key, later in LATER_KEYS.items() if later.variant is not None}
# Keys that only change how a trained model is scored, not how it is trained.
EVALUATION_KEYS = {"test_masking", "metrics", "topk"}
# Keys that change where or how loudly a run happens, never what it computes.
RUNTIME_KEYS = {
    "show_progress", "state", "checkpoint_dir", "data_path", "device", "gpu_id", "use_gpu", "worker",
    "eval_batch_size", "log_wandb", "wandb_project", "save_dataset", "dataset_save_path", "save_dataloaders",
    "dataloaders_save_path", "resume", "retrain_teachers", "local_rank", "single_spec", "nproc", "world_size",
    "offset", "ip", "port", "config_files", "tensorboard", "extra_config_keys",
}


def file_digest(path, _cache={}):
    """SHA-256 of a file's content, remembered per (path, size, mtime)."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _cache:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        _cache[key] = digest.hexdigest()
    return _cache[key]


def dataset_fingerprint(config):
    """Digest of the dataset files a run reads: its interactions and every modality file."""
    names = [f"{config['dataset']}.inter"] + sorted((config["modalities"] or {}).values())
    paths = [os.path.join(config["data_path"], name) for name in names]
    return {os.path.basename(p): file_digest(p) for p in paths if os.path.isfile(p)}


def config_key(config, exclude=()):
    """A digest of everything that determines what a run computes: config and data files."""
    model = str(config["model"])

    def computes_as_before(key, value):
        later = LATER_KEYS.get(key)
        if later is None:
            return False
        return value == later.legacy or (later.variant is not None and not model.endswith(f"_{later.variant}"))

    items = {
        k: v for k, v in config.final_config_dict.items()
        if k not in RUNTIME_KEYS and k not in exclude and not computes_as_before(k, v)
    }
    items["dataset_files"] = dataset_fingerprint(config)
    text = json.dumps(items, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@contextlib.contextmanager
def file_lock(path):
    """An exclusive lock held while the block runs (other processes wait for it). On a read-only
    filesystem there is no lock to take, and none is needed: nobody can train into it either."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle = open(path, "a")  # "a": never truncates a lock another process holds
    except OSError as err:
        if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


RUN_KEY_LENGTH = 12  # hex digits of config_key in checkpoint folder and leaderboard cell names


def default_run_dir(config):
    """Where a run with this config keeps its checkpoints: the same config finds them again."""
    name = f"{config['model']}-{config_key(config)[:RUN_KEY_LENGTH]}"
    return os.path.join(config["checkpoint_dir"], str(config["dataset"]), name)


def teacher_key(config):
    """The run key of a teacher (the backbone's config, ``active_modalities: [m]``): the dataset files
    and every config key but the student-only and the evaluation-only ones, so every student setting
    and every sweep trial shares it."""
    return config_key(config, exclude=CKD_KEYS | EVALUATION_KEYS)


def teacher_run_dir(config, modality):
    """Where the teacher of ``modality`` under ``config`` is cached: named after its :func:`teacher_key`."""
    key = teacher_key(config)[:RUN_KEY_LENGTH]
    return os.path.join(config["checkpoint_dir"], str(config["dataset"]), "teachers", f"{config['model']}-{modality}-{key}")
