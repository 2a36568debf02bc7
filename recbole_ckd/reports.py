"""What a run reports: its training protocol, the code version, dataset statistics, and the
readable summary the command line prints."""

import os
import subprocess

from recbole.utils import set_color

PROTOCOLS = {
    "train": "full ranking; training items masked at validation and test (MMRec, CKD reference)",
    "train_valid": "full ranking; training items masked at validation, training and validation items at test (RecBole)",
}


def training_protocol(config):
    """The training protocol of a run: its name (``protocol``) and the settings that define it."""
    keys = ("train_batch_size", "train_sampler", "learning_rate", "learning_rate_scheduler", "eval_step", "stopping_step")
    return {"name": config["protocol"], **{key: config[key] for key in keys}}


def describe_protocol(protocol):
    """One line, e.g. ``ckd_reference: batches of 1024 distinct uniform users, lr 0.0005, ...``."""
    batches = {"user_uniform": f"batches of {protocol['train_batch_size']} distinct uniform users (one positive, "
                               "one negative each)"}.get(protocol["train_sampler"],
                                                         f"shuffled interactions in batches of {protocol['train_batch_size']}")
    schedule = protocol["learning_rate_scheduler"]
    rate = f"Adam lr {protocol['learning_rate']}" + (f" x {schedule[0]}^(epoch/{schedule[1]})" if schedule else "")
    return (f"{protocol['name']}: {batches}, {rate}, validation every {protocol['eval_step']} epoch(s), stop after "
            f"{protocol['stopping_step'] + 1} validations without improvement")


def code_version():
    """The plugin's version and, in a git checkout, its commit (``+dirty``: uncommitted changes to the
    code or the properties)."""
    import recbole_ckd

    version = {"recbole_ckd": recbole_ckd.__version__, "commit": None}
    root = os.path.dirname(os.path.dirname(os.path.abspath(recbole_ckd.__file__)))
    if os.path.exists(os.path.join(root, ".git")):  # a folder, or a file in a git worktree
        try:
            git = ["git", "-C", root]
            commit = subprocess.run(git + ["rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True)
            dirty = subprocess.run(git + ["status", "--porcelain", "--", "recbole_ckd", "properties"],
                                   capture_output=True, text=True)
            version["commit"] = commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
        except (OSError, subprocess.CalledProcessError):
            pass  # no git on this machine: the version alone
    return version


# read once, when the code is imported: a long process (a leaderboard) keeps running the code it
# imported even if the checkout changes under it
CODE_VERSION = code_version()


def dataset_statistics(train_data, valid_data, test_data):
    """Users, items, interactions per split and modality sizes of a run's data."""
    dataset = train_data.dataset
    split = {name: len(d.dataset) for name, d in (("train", train_data), ("valid", valid_data), ("test", test_data))}
    n_users, n_items = dataset.user_num - 1, dataset.item_num - 1  # id 0 is padding
    stats = {"users": n_users, "items": n_items, "interactions": sum(split.values()),
             "density": round(sum(split.values()) / (n_users * n_items), 6), "split": split}
    for name, matrix in (getattr(dataset, "modality_features", None) or {}).items():
        stats[f"modality {name}"] = f"{matrix.shape[1]}-d"
    return stats


def format_report(result):
    """A readable summary of a result record: the protocol and a metric table."""
    metrics = list(result["test_result"]) or list(result["valid_result"])
    width = max([len(m) for m in metrics] + [6])
    lines = [
        set_color(f"{result['model']} on {result['dataset']} (seed {result['seed']})", "yellow"),
        f"training: {describe_protocol(result['training_protocol'])}",
        f"evaluation: {PROTOCOLS.get(result['test_masking'], result['test_masking'])}",
        f"selection: best validation {result['valid_metric']}; test at that checkpoint",
        f"{'metric':<{width}}  {'valid':>8}  {'test':>8}",
    ]
    for name in metrics:
        valid = result["valid_result"].get(name)
        test = result["test_result"].get(name)
        lines.append(
            f"{name:<{width}}  {valid if valid is None else format(valid, '8.4f'):>8}  "
            f"{test if test is None else format(test, '8.4f'):>8}"
        )
    if result.get("modes"):
        lines += ["", "masking: a masked modality's item features are replaced by their mean over items and its "
                  "user-side parameters by their mean over users; 'only m' masks every modality but m", ""]
        columns = [("valid", "recall@20"), ("test", "recall@10"), ("test", "recall@20"), ("test", "ndcg@20")]
        header = f"{'mode':<16}" + "".join(f"{split + ' ' + metric:>18}" for split, metric in columns)
        lines.append(header)
        for name, splits in result["modes"].items():
            cells = "".join(f"{splits[split].get(metric, float('nan')):>18.4f}" for split, metric in columns)
            lines.append(f"{name:<16}{cells}")
    checkpoints = {k: v for k, v in (result.get("checkpoints") or {"checkpoint": result.get("checkpoint")}).items() if v}
    if checkpoints:
        lines.append("checkpoints, under checkpoint_dir:")
        lines += [f"  {name}: {path}" for name, path in checkpoints.items()]
    return "\n".join(lines)
