"""recbole-ckd's one entry point.

    python run_recbole_ckd.py --model=VBPR --dataset=ml-100k-mm [--key=value ...]
    python run_recbole_ckd.py --model=VBPR_CKD --dataset=ml-100k-mm --hyper=hyper.test [--num_samples=8 ...]
    python run_recbole_ckd.py --leaderboard --dataset=ml-100k-mm --models=BPR,VBPR,VBPR_CKD --seeds=3
    python run_recbole_ckd.py --leaderboard --study=balancing --dataset=ml-100k-mm --models=VBPR,EgoGCN
    python run_recbole_ckd.py --download=baby --url=URL [--sha256=HEX] [--data_path=dataset/]
    python run_recbole_ckd.py --generate=NAME [--n_users=... --strength v=0.3 ...]

Any ``--key=value`` that is not one of the flags below overrides that config key, as in RecBole.
"""

import argparse
import logging
import os
import sys


def build_parser():
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # --seed=7 is a config key, not an abbreviation of --seeds
        description="Multimodal recommendation and CKD on RecBole.",
        epilog="Any other --key=value overrides that config key (e.g. --epochs=5 --learning_rate=0.01).",
    )
    parser.add_argument("--model", help="model name: a recbole-ckd model (e.g. VBPR) or any RecBole model (e.g. BPR)")
    parser.add_argument("--dataset", help="dataset name (shipped: ml-100k-mm; MMRec: baby, sports, clothing)")
    parser.add_argument("--config_files", help="YAML config files, separated by commas or spaces")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sweep = parser.add_argument_group("sweeps (Ray Tune) and parallel leaderboards (Ray tasks)")
    sweep.add_argument("--hyper", metavar="FILE", help="search the space in FILE (RecBole's hyper.test syntax)")
    sweep.add_argument("--num_samples", type=int, default=4, help="trials to sample (per grid point with --search=grid)")
    sweep.add_argument("--search", default="random", help="random, grid, optuna or hyperopt (the last two if installed)")
    sweep.add_argument("--scheduler", default="none", choices=["none", "asha"], help="early stopping of bad trials")
    sweep.add_argument("--cpus_per_trial", type=float, help="CPUs of a trial or leaderboard cell (default 1)")
    sweep.add_argument("--gpus_per_trial", type=float, help="GPUs of a trial or leaderboard cell (default 0); "
                       "fractions allowed, e.g. 0.5")
    sweep.add_argument("--output", help="output folder: sweeps/ for --hyper, results/ for --leaderboard; rerun "
                       "with the same one to resume")
    sweep.add_argument("--ray_address", help="run on an existing Ray cluster (auto: the one this node is in, or "
                       "host:port); a leaderboard then runs its cells as Ray tasks")
    board = parser.add_argument_group("leaderboards")
    board.add_argument("--leaderboard", action="store_true", help="run --models over --seeds, write results/<dataset>.md")
    board.add_argument("--models", help="comma-separated models for --leaderboard, e.g. BPR,LightGCN,VBPR,VBPR_CKD")
    board.add_argument("--seeds", help="a count (default 3: seeds 2020, 2021, 2022) or a list (1,2,3)")
    board.add_argument("--sweeps", metavar="DIR", help="use the best configurations sweeps left in DIR")
    board.add_argument("--study", help="'balancing': for each backbone in --models, the plain model, CKD, CKD's "
                       "ablations and the balancing baselines (modality dropout, OGM-GE, MMPareto); writes "
                       "results/<dataset>-balancing.md")
    board.add_argument("--tune_trials", type=int, help="with --study: tune every row first, each by its own sweep "
                       "of this many trials (--search, --scheduler) over its learning rate, L2 weight and its "
                       "method's knobs, selected on validation; its seeds then run with the selected values, and so does "
                       "the plain backbone at each variant's selected learning rate and L2 weight")
    data = parser.add_argument_group("data commands")
    data.add_argument("--download", metavar="NAME", help="fetch dataset NAME's archive, verify it, unpack it")
    data.add_argument("--url", help="archive URL (or local path) for --download; default: the dataset YAML's")
    data.add_argument("--sha256", help="expected SHA-256 of the archive; default: the dataset YAML's")
    data.add_argument("--force", action="store_true", help="--download: replace an existing dataset folder")
    data.add_argument("--generate", metavar="NAME", help="write a synthetic MMRec-format dataset NAME (see --generate=NAME --help)")
    return parser


def split_config_files(value):
    return [f for f in value.replace(",", " ").split() if f] if value else None


def download(args, overrides):
    from recbole_ckd.config import dataset_properties
    from recbole_ckd.data.download import download_dataset
    from recbole_ckd.data.mmrec_format import check_dataset_name
    from recbole_ckd.errors import ConfigError

    try:
        check_dataset_name(args.download)
    except ValueError as err:  # the name becomes a folder (and names a dataset YAML): it must not leave them
        raise ConfigError(f"--download={args.download}: {err}") from None
    props = dataset_properties(args.download, overrides)
    url = args.url or props.get("download_url")
    if not url:
        info = props.get("download_info") or "no public copy is registered"
        raise ConfigError(
            f"No archive URL is known for '{args.download}'. Pass --url=URL (and --sha256=HEX). Public copies: {info}"
        )
    dest = os.path.join(props.get("data_path") or "dataset/", args.download)
    expected = [f"{args.download}.inter"] + list((props.get("modalities") or {}).values())
    path = download_dataset(url, dest, args.sha256 or props.get("download_sha256"), expected, force=args.force)
    print(f"Dataset '{args.download}' is ready in {path}")


# the commands each flag belongs to (None: a training run); given to another it would be ignored
FLAG_COMMANDS = {
    "--num_samples": ("--hyper",),
    **dict.fromkeys(("--search", "--scheduler"), ("--hyper", "--leaderboard")),
    **dict.fromkeys(("--cpus_per_trial", "--gpus_per_trial", "--ray_address"), ("--hyper", "--leaderboard")),
    **dict.fromkeys(("--models", "--seeds", "--sweeps", "--study", "--tune_trials"), ("--leaderboard",)),
    **dict.fromkeys(("--url", "--sha256", "--force"), ("--download",)),
    "--output": ("--hyper", "--leaderboard"),
    "--model": (None, "--hyper"),
    **dict.fromkeys(("--dataset", "--config_files"), (None, "--hyper", "--leaderboard")),
}


def given(argv, flag):
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def check_flags(parser, argv):
    """Refuse flags that do not combine (each would be ignored without a word)."""
    commands = [flag for flag in ("--hyper", "--leaderboard", "--download", "--generate") if given(argv, flag)]
    if len(commands) > 1:
        parser.error(f"{' and '.join(commands)} do not combine; run one command at a time")
    command = commands[0] if commands else None
    for flag, owners in FLAG_COMMANDS.items():
        if given(argv, flag) and command not in owners:
            where = " or ".join("a training run" if o is None else o for o in owners)
            parser.error(f"{flag} is for {where}; with {command or 'a training run'} it would be ignored")


def check_resources(parser, args):
    """Refuse trial and cell sizes that would never run (Ray would wait forever for them)."""
    import math

    if args.num_samples < 1:
        parser.error(f"--num_samples={args.num_samples}: give at least 1 trial")
    if args.cpus_per_trial is not None and not (math.isfinite(args.cpus_per_trial) and args.cpus_per_trial > 0):
        parser.error(f"--cpus_per_trial={args.cpus_per_trial:g}: give a number of CPUs > 0, e.g. 1 or 0.5")
    if args.gpus_per_trial is not None and not (math.isfinite(args.gpus_per_trial) and args.gpus_per_trial >= 0):
        parser.error(f"--gpus_per_trial={args.gpus_per_trial:g}: give a number of GPUs >= 0, e.g. 1 or 0.5")
    if args.gpus_per_trial and not args.ray_address:
        import torch

        if args.gpus_per_trial > torch.cuda.device_count():
            parser.error(f"--gpus_per_trial={args.gpus_per_trial:g}: this machine has {torch.cuda.device_count()} "
                         "GPU(s) that PyTorch can use; give fewer, or --ray_address of a cluster that has them")


def check_tuning(parser, args, argv):
    """A leaderboard tunes only a study, by trials of its own (not another sweep's); --search and
    --scheduler are for its sweeps."""
    if args.tune_trials is None:
        for flag in ("--search", "--scheduler"):
            if given(argv, flag):
                parser.error(f"{flag} is for --hyper or --leaderboard --study --tune_trials=N; without --tune_trials "
                             "it would be ignored")
        return
    if not args.study:
        parser.error("--tune_trials needs --study (it tunes each row of a study), e.g. --study=balancing")
    if args.tune_trials < 1:
        parser.error(f"--tune_trials={args.tune_trials}: give at least 1 trial per row")
    if args.sweeps:
        parser.error("--tune_trials and --sweeps do not combine: a tuned study runs its own sweeps; give one of them")


def check_output_folder(path):
    """``--output`` must be a folder this user may write, or one it may create: refused before anything runs
    (``os.access``: a read-only file system counts, and for root only that does)."""
    from recbole_ckd.errors import ConfigError

    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"--output={path}: {existing} is a file; give a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--output={path}: the folder {existing} is not writable; give a folder you may write.")


def main(argv=None):
    """The command line: a user error (bad data, config or flags) is one ``error:`` line and exit
    status 2; an interruption says how to resume and exits 130; ``--debug`` shows tracebacks."""
    from recbole_ckd.errors import Interrupted, UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return dispatch(argv)
    except UserError as err:
        if "--debug" in argv:
            raise
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        raise SystemExit(2) from None
    except (Interrupted, KeyboardInterrupt) as err:
        if "--debug" in argv:
            raise
        print(f"interrupted: {str(err) or 'every stage saved its last checkpoint; run the same command again to resume'}",
              file=sys.stderr)
        raise SystemExit(130) from None


def dispatch(argv):
    generate = [a for a in argv if a == "--generate" or a.startswith("--generate=")]
    if generate:
        # the generator has its own flags (and its own --help)
        parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
        parser.add_argument("--generate")
        args, rest = parser.parse_known_args(argv)
        check_flags(build_parser(), argv)
        from recbole_ckd.data import synthetic
        from recbole_ckd.errors import ConfigError

        try:
            return synthetic.main(["--name", args.generate] + [a for a in rest if a != "--debug"])
        except (ValueError, FileExistsError) as err:  # the generator's checks of its flags
            raise ConfigError(f"--generate={args.generate}: {err}") from err
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    check_flags(parser, argv)
    check_resources(parser, args)
    # everything left is a config override and must look like --key=value
    bad = [a for a in rest if not (a.startswith("--") and "=" in a)]
    if bad:
        parser.error(f"unrecognised arguments {bad}; config overrides are written --key=value")
    if args.download:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        return download(args, rest)
    if args.leaderboard:
        from recbole_ckd.leaderboard import parse_models, parse_seeds, run_leaderboard, study_entries

        if not args.dataset or not args.models:
            parser.error("--leaderboard needs --dataset and --models")
        try:
            seeds = parse_seeds(args.seeds or "3")
            models = parse_models(args.models)
            if args.study:
                study_entries(args.study, models)
        except ValueError as error:
            parser.error(str(error))
        check_tuning(parser, args, argv)
        check_output_folder(args.output or "results")
        return run_leaderboard(args.dataset, models, seeds, args.output or "results",
                               split_config_files(args.config_files), rest, args.sweeps, args.study,
                               ray_address=args.ray_address, cpus_per_cell=args.cpus_per_trial,
                               gpus_per_cell=args.gpus_per_trial, tune_trials=args.tune_trials,
                               search=args.search, scheduler=args.scheduler)
    if not args.model or not args.dataset:
        parser.error("--model and --dataset are required to train (or use --download / --generate)")
    from recbole_ckd.registry import canonical_model_name

    args.model = canonical_model_name(args.model)  # --model=bpr is BPR (its sweep folder too)

    if args.hyper:
        from recbole_ckd.tune import run_sweep

        check_output_folder(args.output or "sweeps")
        return run_sweep(
            args.model, args.dataset, args.hyper, split_config_files(args.config_files), rest,
            num_samples=args.num_samples, search=args.search, scheduler=args.scheduler,
            cpus_per_trial=1.0 if args.cpus_per_trial is None else args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial or 0.0, output=args.output or "sweeps",
            ray_address=args.ray_address,
        )
    from recbole_ckd.quick_start import run
    from recbole_ckd.reports import format_report

    result = run(args.model, args.dataset, split_config_files(args.config_files), cmd_args=rest)
    print(format_report(result))
    return result


if __name__ == "__main__":
    main()
