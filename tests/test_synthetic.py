"""The synthetic MMRec-format generator: shapes, coverage, determinism, and the planted strengths."""

import json
import math

import numpy as np
import pytest

from recbole_ckd.data.mmrec_format import INTER_COLUMNS, dataset_statistics, read_mmrec_dataset
from recbole_ckd.data.synthetic import (
    DEFAULT_MODALITIES,
    generate_dataset,
    main,
    parse_modalities,
    synthesize,
)

SMALL = dict(n_users=300, n_items=200, n_interactions=3000, latent_dim=16)
SMALL_MODALITIES = {"v": ("image_feat.npy", 24, 0.3), "t": ("text_feat.npy", 8, 0.8)}


def _cosine(x):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


def test_shapes_counts_and_coverage(tmp_path):
    path = generate_dataset(tmp_path, "synth", modalities=SMALL_MODALITIES, seed=1, **SMALL)
    inter, feats, info = read_mmrec_dataset(path)
    assert list(inter.columns) == INTER_COLUMNS
    assert (path / "synth.inter").read_text().split("\n", 1)[0] == "userID\titemID\trating\ttimestamp\tx_label"
    stats = dataset_statistics(inter)
    assert stats["n_users"] == 300 and stats["n_items"] == 200
    assert abs(stats["n_interactions"] - 3000) <= 30
    assert stats["interactions_per_user"]["min"] >= 5
    # every user and every item has a train interaction
    train = inter[inter.x_label == 0]
    assert set(train.userID) == set(range(300)) and set(train.itemID) == set(range(200))
    assert stats["users_without_train"] == 0 and stats["items_without_train"] == 0
    assert not inter.duplicated(["userID", "itemID"]).any()
    assert (inter.groupby("userID").timestamp.diff().dropna() > 0).all()
    assert feats["image_feat.npy"].shape == (200, 24) and feats["text_feat.npy"].shape == (200, 8)
    assert all(m.dtype == np.float32 and np.isfinite(m).all() for m in feats.values())
    assert info["provenance"]["generator"]["modalities"]["v"] == {"file": "image_feat.npy", "dim": 24, "strength": 0.3}
    assert info["statistics"]["n_interactions"] == len(inter)


def test_default_modalities_are_baby_shaped():
    assert DEFAULT_MODALITIES == {"v": ("image_feat.npy", 4096, 0.3), "t": ("text_feat.npy", 384, 0.8)}
    data = synthesize(n_users=50, n_items=40, n_interactions=400)
    assert {f: m.shape for f, m in data.features.items()} == {"image_feat.npy": (40, 4096), "text_feat.npy": (40, 384)}


def test_deterministic_for_a_seed(tmp_path):
    a = generate_dataset(tmp_path, "a", modalities=SMALL_MODALITIES, seed=7, **SMALL)
    b = generate_dataset(tmp_path, "b", modalities=SMALL_MODALITIES, seed=7, **SMALL)
    c = generate_dataset(tmp_path, "c", modalities=SMALL_MODALITIES, seed=8, **SMALL)
    for f in ("image_feat.npy", "text_feat.npy"):
        assert (a / f).read_bytes() == (b / f).read_bytes()
        assert (a / f).read_bytes() != (c / f).read_bytes()
    assert (a / "a.inter").read_bytes() == (b / "b.inter").read_bytes()
    assert (a / "a.inter").read_bytes() != (c / "c.inter").read_bytes()


def test_modalities_do_not_disturb_each_other():
    # a modality's strength changes its own features only, not the interactions or other modalities
    one = synthesize(modalities={"v": ("image_feat.npy", 16, 0.1), "t": ("text_feat.npy", 8, 0.8)}, **SMALL)
    two = synthesize(modalities={"v": ("image_feat.npy", 16, 0.9), "t": ("text_feat.npy", 8, 0.8)}, **SMALL)
    assert one.inter.equals(two.inter)
    np.testing.assert_array_equal(one.features["text_feat.npy"], two.features["text_feat.npy"])
    assert not np.array_equal(one.features["image_feat.npy"], two.features["image_feat.npy"])


def test_planted_strength_is_real():
    # how well feature-space item similarity tracks latent-factor similarity, per strength
    mods = {"v": ("image_feat.npy", 64, 0.0), "h": ("half_feat.npy", 64, 0.5), "t": ("text_feat.npy", 64, 1.0)}
    data = synthesize(modalities=mods, seed=3, **SMALL)
    pairs = np.triu_indices(SMALL["n_items"], 1)
    latent = _cosine(data.item_factors)[pairs]
    corr = {f: np.corrcoef(_cosine(m)[pairs], latent)[0, 1] for f, m in data.features.items()}
    assert corr["text_feat.npy"] > 0.8
    assert abs(corr["image_feat.npy"]) < 0.1
    assert 0.2 < corr["half_feat.npy"] < corr["text_feat.npy"] - 0.2


def test_interactions_follow_the_latent_preferences():
    data = synthesize(modalities={}, seed=4, **SMALL)
    users, items = data.inter.userID.to_numpy(), data.inter.itemID.to_numpy()
    affinity = data.user_factors @ data.item_factors.T / math.sqrt(SMALL["latent_dim"])
    chosen = affinity[users, items].mean()
    rng = np.random.default_rng(0)
    random_pairs = affinity[rng.integers(0, 300, 5000), rng.integers(0, 200, 5000)].mean()
    assert chosen > random_pairs + 0.5  # affinity has unit variance; sampled pairs sit well above
    # popular items (high popularity logit) are drawn more often
    degree = np.bincount(items, minlength=SMALL["n_items"])
    assert np.corrcoef(degree, data.item_popularity)[0, 1] > 0.3


def test_items_are_reassigned_to_cover_train():
    # a steep popularity leaves many items undrawn; they must still get a train interaction
    data = synthesize(n_users=200, n_items=300, n_interactions=1200, popularity_std=3.0, modalities={}, seed=2)
    assert data.info["generator"]["rows_reassigned_to_cover_items"] > 20
    stats = dataset_statistics(data.inter)
    assert stats["n_items"] == 300 and stats["items_without_train"] == 0 and stats["users_without_train"] == 0
    assert not data.inter.duplicated(["userID", "itemID"]).any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_users=100, n_items=50, n_interactions=400), "must lie between 5 per user"),  # fewer than 5 per user
        (dict(n_users=2, n_items=10, n_interactions=10), "train interactions for 10 items"),  # too few train rows
        (dict(n_users=10, n_items=10, n_interactions=101), r"and n_users \* n_items \(100\)"),
        (dict(n_users=50, n_items=40, n_interactions=400, modalities={"v": ("image_feat.npy", 4, 1.5)}),
         r"modality 'v': strength must be in \[0, 1\], got 1.5"),
        (dict(n_users=50, n_items=40, n_interactions=400, temperature=0.0), "temperature must be positive"),
    ],
)
def test_rejects_impossible_shapes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthesize(**kwargs)


def test_refuses_existing_target(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_dataset(tmp_path, "taken", modalities=SMALL_MODALITIES, **SMALL)
    generate_dataset(tmp_path, "taken", modalities=SMALL_MODALITIES, overwrite=True, **SMALL)
    assert (tmp_path / "taken" / "taken.inter").exists()


def test_parse_modalities():
    assert parse_modalities() == DEFAULT_MODALITIES
    mods = parse_modalities(["v=0.1", "a=0.9"], ["t=16"], ["a=audio.npy"])
    assert mods == {
        "v": ("image_feat.npy", 4096, 0.1),
        "t": ("text_feat.npy", 16, 0.8),
        "a": ("audio.npy", 128, 0.9),
    }
    assert parse_modalities(names="t") == {"t": DEFAULT_MODALITIES["t"]}
    for bad, message in ((dict(strengths=["v"]), "--strength expects NAME=VALUE, got 'v'"),
                         (dict(strengths=["v=x"]), "--strength v=x: 'x' is not a valid value"),
                         (dict(strengths=["v=2"]), "modality 'v': strength must be in"),
                         (dict(dims=["t=4"], names="v"), r"options given for modalities \['t'\] not in --modalities")):
        with pytest.raises(ValueError, match=message):
            parse_modalities(**bad)


def test_cli(tmp_path, capsys):
    path = main(
        ["--name", "cli", "--root", str(tmp_path), "--n_users=60", "--n_items=50", "--n_interactions=600",
         "--strength", "v=0.1", "--strength=t=1.0", "--dim", "v=8", "--dim", "t=4", "--seed=3"]
    )
    assert path == tmp_path / "cli"
    out = capsys.readouterr().out
    assert '"n_users": 60' in out and '"n_items": 50' in out
    info = json.loads((path / "dataset_info.json").read_text())
    assert info["provenance"]["generator"]["modalities"]["t"] == {"file": "text_feat.npy", "dim": 4, "strength": 1.0}
    assert np.load(path / "image_feat.npy").shape == (50, 8)
    with pytest.raises(SystemExit) as exit_info:
        main(["--name", "cli2", "--root", str(tmp_path), "--strength", "v"])
    assert exit_info.value.code == 2 and "--strength expects NAME=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "cli2").exists()


@pytest.mark.slow
def test_the_same_seed_writes_the_same_bytes_whatever_the_number_of_threads(tmp_path):
    """Multi-threaded BLAS products sum in another order and change the features' last bits; the
    generator's products do not depend on the thread count, so a seed gives one dataset everywhere."""
    import os
    import subprocess
    import sys

    written = []
    for threads in ("1", "2"):
        root = tmp_path / threads
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        subprocess.run([sys.executable, "-m", "recbole_ckd.data.synthetic", "--name", "x", "--root", str(root),
                        "--n_users", "400", "--n_items", "705", "--n_interactions", "4000"],
                       env=env, check=True, capture_output=True)
        written.append({f.name: f.read_bytes() for f in (root / "x").iterdir() if f.suffix in (".npy", ".inter")})
    assert written[0] == written[1]
