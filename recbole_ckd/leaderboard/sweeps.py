"""The tuned configurations a leaderboard takes from the sweeps' folder."""

import os


def tuned_configs(sweeps_dir, dataset, models):
    """Best configurations (and their search spaces) that sweeps left in ``sweeps_dir``."""
    from recbole_ckd.errors import ConfigError
    from recbole_ckd.settings_files import read_yaml

    if not os.path.isdir(sweeps_dir):
        raise ConfigError(f"--sweeps={sweeps_dir} is not a folder; give the --output of the sweeps (default sweeps/).")
    tuned, spaces = {}, {}
    for model in models:
        best = os.path.join(sweeps_dir, f"{model}-{dataset}-best.yaml")
        if os.path.isfile(best):
            tuned[model] = best
            space = best.replace("-best.yaml", "-space.yaml")
            spaces[model] = read_yaml(space) if os.path.isfile(space) else {}
    return tuned, spaces
