"""Synthetic MMRec-format datasets of any size, with a planted, controllable strength per modality.

The model: users and items have Gaussian latent factors ``p_u`` and ``z_i`` (``latent_dim``) and
every item a popularity logit ``b_i ~ N(0, popularity_std^2)`` (so item popularity is log-normal,
long-tailed). A user draws its items without replacement with probabilities
``softmax((<p_u, z_i> / sqrt(latent_dim) + b_i) / temperature)``; how many items a user draws is
``5 + a log-normal share`` of the remaining budget, so the total is ``n_interactions``.

Modality ``m`` with strength ``s`` has features ``s * (z @ A_m) + sqrt(1 - s^2) * noise``, where
``A_m`` is a random projection with unit-norm columns, so every feature column has unit variance
and a fraction ``s^2`` of it is preference signal: 0 is pure noise, 1 a noiseless linear map of
the item factors.

    python -m recbole_ckd.data.synthetic --name=synth --root=dataset --strength v=0.3 --strength t=0.8
"""

import argparse
import logging
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_ckd.data.mmrec_format import TRAIN, print_summary, split_per_user, write_mmrec_dataset

logger = logging.getLogger(__name__)

# modality name -> (file name, feature dim, strength); Amazon-Baby-shaped: image weak, text strong
DEFAULT_MODALITIES = {"v": ("image_feat.npy", 4096, 0.3), "t": ("text_feat.npy", 384, 0.8)}
NEW_MODALITY_DIM, NEW_MODALITY_STRENGTH = 128, 0.5
MIN_PER_USER = 5
# float32 elements per working matrix: bounds memory (two such matrices, ~16 MB each)
BLOCK_ELEMENTS = 4_000_000

# independent random streams: changing one modality leaves the interactions and the others alone
_LATENT, _COUNTS, _SAMPLE, _TIME, _SPLIT, _COVER, _FEATURE = range(7)


def _rng(seed, *stream):
    return np.random.default_rng([seed, *stream])


@dataclass
class SyntheticData:
    """A generated dataset in memory, with the hidden factors it was drawn from."""

    inter: pd.DataFrame
    features: dict  # feature file name -> float32 [n_items, dim]
    user_factors: np.ndarray
    item_factors: np.ndarray
    item_popularity: np.ndarray
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- pieces
def _user_counts(n_users, n_items, n_interactions, rng):
    """Interactions per user: a floor of 5 plus a long-tailed (log-normal) share of the rest."""
    floor = min(MIN_PER_USER, n_items)
    extra_total = n_interactions - floor * n_users
    share = rng.lognormal(0.0, 1.0, n_users)
    share *= extra_total / share.sum()
    extra = np.floor(share).astype(np.int64)
    # hand the rounding remainder to the largest fractional parts so the total is exact
    remainder = int(extra_total - extra.sum())
    extra[np.argsort(extra - share, kind="stable")[:remainder]] += 1
    # nobody can draw more items than exist (the total then falls a little short)
    return np.minimum(floor + extra, n_items)


def _sample_items(user_factors, item_factors, popularity, counts, temperature, rng):
    """For each user, counts[u] distinct items drawn without replacement from the softmax
    of its logits (Gumbel top-k), in draw order. Works through blocks of users to bound memory."""
    import torch  # only for topk, which is much faster than numpy's argpartition

    n_users, latent_dim = user_factors.shape
    n_items = len(item_factors)
    scale = 1.0 / (math.sqrt(latent_dim) * temperature)
    item_t = np.ascontiguousarray((item_factors * scale).T, dtype=np.float32)
    bias = (popularity / temperature).astype(np.float32)
    block = max(1, BLOCK_ELEMENTS // n_items)
    logits = np.empty((block, n_items), dtype=np.float32)
    noise = np.empty((block, n_items), dtype=np.float32)
    tiny = np.finfo(np.float32).tiny
    n_blocks = -(-n_users // block)
    log_every = max(1, n_blocks // 10)
    chosen = []
    for b, start in enumerate(range(0, n_users, block)):
        stop = min(start + block, n_users)
        lg, nz = logits[: stop - start], noise[: stop - start]
        np.einsum("ud,di->ui", user_factors[start:stop], item_t, out=lg)  # not BLAS: see _features
        lg += bias
        # Gumbel noise -log(-log U), computed in place; U > 0 keeps the logs finite
        rng.random(out=nz, dtype=np.float32)
        np.maximum(nz, tiny, out=nz)
        np.log(nz, out=nz)
        np.negative(nz, out=nz)
        np.log(nz, out=nz)
        lg -= nz
        k = counts[start:stop]
        top = torch.topk(torch.from_numpy(lg), int(k.max()), dim=1, sorted=True).indices.numpy()
        chosen.append(top[np.arange(top.shape[1]) < k[:, None]])
        if n_blocks > 20 and (b + 1) % log_every == 0:
            logger.info("sampled interactions of %d / %d users", stop, n_users)
    return np.concatenate(chosen).astype(np.int64)


def _rank_within_groups(keys):
    """Position of each row among the rows with the same key, in row order."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(keys)) - np.repeat(starts, sizes)
    return rank


def _cover_items_in_train(users, items, labels, n_items, rng):
    """Give every item at least one train interaction by re-pointing a few train rows.

    A donor is a train row whose item keeps another train row, so no item loses its last one;
    a user never gets an item twice. Returns the new items and how many rows changed.
    """
    train_rows = np.flatnonzero(labels == TRAIN)
    if len(train_rows) < n_items:
        raise ValueError(
            f"only {len(train_rows)} train interactions for {n_items} items: every item needs one; "
            "raise n_interactions or lower n_items"
        )
    missing = np.flatnonzero(np.bincount(items[train_rows], minlength=n_items) == 0)
    if len(missing) == 0:
        return items, 0
    candidates = rng.permutation(train_rows)
    donors = candidates[_rank_within_groups(items[candidates]) >= 1]
    # only pairs with a missing item can clash (each missing item is placed once)
    clash = np.isin(items, missing)
    taken = set((users[clash].astype(np.int64) * n_items + items[clash]).tolist())
    items = items.copy()
    pos = 0
    for item in missing:  # few items in practice
        while pos < len(donors) and int(users[donors[pos]]) * n_items + int(item) in taken:
            pos += 1
        if pos == len(donors):
            raise ValueError("too few train interactions to give every item one; raise n_interactions")
        row = donors[pos]
        taken.add(int(users[row]) * n_items + int(item))
        items[row] = item
        pos += 1
    return items, len(missing)


def _features(item_factors, dim, strength, rng):
    """strength * (z @ A) + sqrt(1 - strength^2) * noise, A with unit-norm columns, float32."""
    n_items, latent_dim = item_factors.shape
    proj = rng.standard_normal((latent_dim, dim))
    proj = (proj / np.linalg.norm(proj, axis=0)).astype(np.float32)
    signal_w, noise_w = np.float32(strength), np.float32(math.sqrt(max(0.0, 1.0 - strength**2)))
    out = np.empty((n_items, dim), dtype=np.float32)
    rows = max(1, BLOCK_ELEMENTS // dim)
    for start in range(0, n_items, rows):  # in chunks: only the output is ever held in full
        stop = min(start + rows, n_items)
        # einsum, not a BLAS product: its sums do not depend on the number of threads, so the same
        # seed writes the same bytes on every machine
        out[start:stop] = np.einsum("nd,dk->nk", item_factors[start:stop], proj)
        out[start:stop] *= signal_w
        out[start:stop] += noise_w * rng.standard_normal((stop - start, dim), dtype=np.float32)
    return out


def _check_modalities(modalities):
    checked = {}
    for name, spec in modalities.items():
        file_name, dim, strength = spec
        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"modality '{name}': strength must be in [0, 1], got {strength}")
        if int(dim) < 1:
            raise ValueError(f"modality '{name}': dim must be positive, got {dim}")
        checked[name] = (str(file_name), int(dim), float(strength))
    files = [f for f, _, _ in checked.values()]
    if len(set(files)) != len(files):
        raise ValueError(f"two modalities share a file name: {files}")
    return checked


# ---------------------------------------------------------------------------- public API
def synthesize(
    *,
    n_users=19445,
    n_items=7050,
    n_interactions=160792,
    modalities=None,
    latent_dim=32,
    seed=2024,
    temperature=0.7,
    popularity_std=0.7,
):
    """Generate a dataset in memory (see the module docstring); deterministic for a seed."""
    modalities = _check_modalities(DEFAULT_MODALITIES if modalities is None else modalities)
    if n_users < 1 or n_items < 1 or latent_dim < 1:
        raise ValueError("n_users, n_items and latent_dim must be positive")
    floor = min(MIN_PER_USER, n_items)
    if not floor * n_users <= n_interactions <= n_users * n_items:
        raise ValueError(
            f"n_interactions={n_interactions} must lie between {floor} per user ({floor * n_users}) "
            f"and n_users * n_items ({n_users * n_items})"
        )
    if temperature <= 0 or popularity_std < 0:
        raise ValueError("temperature must be positive and popularity_std non-negative")
    started = time.time()

    rng = _rng(seed, _LATENT)
    user_factors = rng.standard_normal((n_users, latent_dim), dtype=np.float32)
    item_factors = rng.standard_normal((n_items, latent_dim), dtype=np.float32)
    popularity = (popularity_std * rng.standard_normal(n_items)).astype(np.float32)

    counts = _user_counts(n_users, n_items, n_interactions, _rng(seed, _COUNTS))
    logger.info("sampling %d interactions of %d users over %d items", counts.sum(), n_users, n_items)
    items = _sample_items(user_factors, item_factors, popularity, counts, temperature, _rng(seed, _SAMPLE))
    users = np.repeat(np.arange(n_users, dtype=np.int64), counts)

    # one interaction a day per user, in draw order, from a random start within two years
    rank = np.arange(len(users)) - np.repeat(np.cumsum(counts) - counts, counts)
    start_day = _rng(seed, _TIME).integers(0, 730, n_users)
    timestamps = 1_500_000_000 + (np.repeat(start_day, counts) + rank) * 86_400

    labels = split_per_user(users, _rng(seed, _SPLIT))
    items, n_reassigned = _cover_items_in_train(users, items, labels, n_items, _rng(seed, _COVER))
    inter = pd.DataFrame(
        {"userID": users, "itemID": items, "rating": 1.0, "timestamp": timestamps, "x_label": labels}
    )

    features = {}
    for name, (file_name, dim, strength) in modalities.items():
        logger.info("features of modality '%s': %d x %d, strength %.2f", name, n_items, dim, strength)
        stream = _rng(seed, _FEATURE, zlib.crc32(name.encode()))
        features[file_name] = _features(item_factors, dim, strength, stream)

    info = {
        "source": "synthetic (recbole_ckd.data.synthetic)",
        "generator": {
            "n_users": n_users,
            "n_items": n_items,
            "n_interactions_target": n_interactions,
            "latent_dim": latent_dim,
            "seed": seed,
            "temperature": temperature,
            "popularity_std": popularity_std,
            "min_interactions_per_user": floor,
            "modalities": {m: {"file": f, "dim": d, "strength": s} for m, (f, d, s) in modalities.items()},
            "rows_reassigned_to_cover_items": n_reassigned,
        },
        "split": "MMRec's random per-user rule (recbole_ckd.data.mmrec_format.split_per_user)",
    }
    logger.info("generated in %.1f s", time.time() - started)
    return SyntheticData(inter, features, user_factors, item_factors, popularity, info)


def generate_dataset(root, name, *, overwrite=False, **params):
    """Generate a synthetic dataset and write it to ``<root>/<name>/`` in MMRec's format.

    ``params`` are :func:`synthesize`'s (shape, ``modalities`` as ``{name: (file_name, dim,
    strength)}``, default ``DEFAULT_MODALITIES``: v image_feat.npy 4096-d 0.3, t
    text_feat.npy 384-d 0.8; ``latent_dim``, ``seed``, ``temperature``, ``popularity_std``).
    Returns the dataset folder.
    """
    target = Path(root) / name
    if target.exists() and not overwrite:  # fail before minutes of work, not after
        raise FileExistsError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it")
    data = synthesize(**params)
    path = write_mmrec_dataset(root, name, data.inter, data.features, info=data.info, overwrite=overwrite)
    logger.info("wrote %s", path)
    return path


# ---------------------------------------------------------------------------- CLI
def _pairs(values, option, convert):
    result = {}
    for value in values or ():
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} expects NAME=VALUE, got '{value}'")
        try:
            result[key] = convert(raw)
        except ValueError:
            raise ValueError(f"{option} {value}: '{raw}' is not a valid value") from None
    return result


def parse_modalities(strengths=(), dims=(), files=(), names=None):
    """Modalities from CLI-style ``NAME=VALUE`` strings, on top of DEFAULT_MODALITIES.

    A name not in the defaults becomes a new modality (file ``<name>_feat.npy``, dim 128,
    strength 0.5 unless given). ``names`` (a list or a comma-separated string) keeps only those.
    """
    strength = _pairs(strengths, "--strength", float)
    dim = _pairs(dims, "--dim", int)
    file_name = _pairs(files, "--file", str)
    if isinstance(names, str):
        names = [n for n in names.split(",") if n]
    wanted = list(names) if names else list(dict.fromkeys([*DEFAULT_MODALITIES, *strength, *dim, *file_name]))
    extra = set(strength) | set(dim) | set(file_name)
    if names and extra - set(wanted):
        raise ValueError(f"options given for modalities {sorted(extra - set(wanted))} not in --modalities {wanted}")
    result = {}
    for m in wanted:
        f0, d0, s0 = DEFAULT_MODALITIES.get(m, (f"{m}_feat.npy", NEW_MODALITY_DIM, NEW_MODALITY_STRENGTH))
        result[m] = (file_name.get(m, f0), dim.get(m, d0), strength.get(m, s0))
    return _check_modalities(result)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m recbole_ckd.data.synthetic",
        description="Write a synthetic MMRec-format dataset with a planted strength per modality.",
    )
    parser.add_argument("--name", required=True, help="dataset name: writes ROOT/NAME/NAME.inter and features")
    parser.add_argument("--root", default="dataset", help="folder holding datasets (default: dataset)")
    parser.add_argument("--n_users", type=int, default=19445)
    parser.add_argument("--n_items", type=int, default=7050)
    parser.add_argument("--n_interactions", type=int, default=160792)
    parser.add_argument("--latent_dim", type=int, default=32)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--temperature", type=float, default=0.7, help="softmax temperature of item choice")
    parser.add_argument("--popularity_std", type=float, default=0.7, help="spread of item popularity logits")
    parser.add_argument("--strength", action="append", metavar="NAME=S", help="modality strength in [0, 1]; repeatable")
    parser.add_argument("--dim", action="append", metavar="NAME=D", help="modality feature dim; repeatable")
    parser.add_argument("--file", action="append", metavar="NAME=FILE", help="modality feature file; repeatable")
    parser.add_argument("--modalities", metavar="M1,M2", help="keep only these modalities (default: v,t + any named)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        modalities = parse_modalities(args.strength, args.dim, args.file, args.modalities)
    except ValueError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    path = generate_dataset(
        args.root,
        args.name,
        n_users=args.n_users,
        n_items=args.n_items,
        n_interactions=args.n_interactions,
        modalities=modalities,
        latent_dim=args.latent_dim,
        seed=args.seed,
        temperature=args.temperature,
        popularity_std=args.popularity_std,
        overwrite=args.overwrite,
    )
    print_summary(path, args.name)
    return path


if __name__ == "__main__":
    main()
