"""ItemKNNCBF: scores against a dense version of its equations on hand-made data, masking, an end-to-end
run from the command line, and the refusal of its CKD and balancing variants."""

import re

import numpy as np
import pytest
import torch
from conftest import build_model, fast_args, write_tiny_mmrec

import run_recbole_ckd
from recbole_ckd.errors import ConfigError
from recbole_ckd.registry import get_model

REFUSAL = ("{variant} cannot be built: ItemKNNCBF has nothing to train (its scores follow from the training "
           "interactions and the features)")

# 3 users, 5 items; every user has a train, a valid and a test item
ROWS = [(0, 0, 1.0, 1, 0), (0, 1, 1.0, 2, 0), (0, 2, 1.0, 3, 1), (0, 3, 1.0, 4, 2),
        (1, 2, 1.0, 1, 0), (1, 4, 1.0, 2, 1), (1, 0, 1.0, 3, 2),
        (2, 3, 1.0, 1, 0), (2, 4, 1.0, 2, 0), (2, 1, 1.0, 3, 1), (2, 2, 1.0, 4, 2)]
# no two similarities of a row tie (joint, or with v masked), so every top-k is unambiguous
FEATURES = {
    "v": np.array([[1.0, 0.2], [0.7, 1.1], [0.1, 2.0], [3.0, 0.9], [-1.2, 0.8]], dtype=np.float32),
    "t": np.array([[0.3], [1.4], [2.1], [-0.6], [1.7]], dtype=np.float32),
}


def dense_scores(features, train_rows, n_users, n_items, knn_k, shrink):
    """``R S`` over raw ids, from the equations (concatenated features, shrunk cosine, top-k rows)."""
    x = torch.tensor(np.concatenate([features["v"], features["t"]], axis=1), dtype=torch.float64)
    sim = torch.zeros(n_items, n_items, dtype=torch.float64)
    for i in range(n_items):
        for j in range(n_items):
            sim[i, j] = x[i] @ x[j] / (x[i].norm() * x[j].norm() + shrink)
    s = torch.zeros_like(sim)
    for i in range(n_items):
        for j in sorted(range(n_items), key=lambda j: -sim[i, j])[:knn_k]:
            s[i, j] = sim[i, j]
    r = torch.zeros(n_users, n_items, dtype=torch.float64)
    for u, i, *_ in train_rows:
        r[u, i] = 1.0
    return r @ s


def build_hand_made(tmp_path, **extra):
    write_tiny_mmrec(str(tmp_path / "data"), rows=ROWS, features=FEATURES)
    model, train = build_model("ItemKNNCBF", str(tmp_path / "data"), tmp_path / "saved", **extra)
    tokens = train.dataset.field2id_token
    users = [int(t) for t in tokens["userID"][1:]]
    items = [int(t) for t in tokens["itemID"][1:]]
    return model.eval(), users, items


@pytest.mark.parametrize("knn_k, shrink", [(2, 10.0), (3, 0.0), (4, 1.5)])
def test_scores_are_the_dense_equations(tmp_path, knn_k, shrink):
    model, users, items = build_hand_made(tmp_path, knn_k=knn_k, shrink=shrink)
    train_rows = [row for row in ROWS if row[4] == 0]
    expected = dense_scores(FEATURES, train_rows, 3, 5, knn_k, shrink)[users][:, items]
    with torch.no_grad():
        user_table, item_table = model.forward()
    got = (user_table @ item_table.T)[1:, 1:]  # internal ids, without the padding user and item
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(item_table, torch.eye(6))


def test_masking_a_modality_is_its_mean_in_the_similarity(tmp_path):
    model, users, items = build_hand_made(tmp_path, knn_k=3, shrink=1.0)
    train_rows = [row for row in ROWS if row[4] == 0]
    only_t = {"v": np.repeat(FEATURES["v"].mean(0, keepdims=True), 5, axis=0), "t": FEATURES["t"]}
    expected = dense_scores(only_t, train_rows, 3, 5, 3, 1.0)[users][:, items]
    with torch.no_grad():
        user_table, item_table = model.forward(frozenset({"v"}))
    torch.testing.assert_close((user_table @ item_table.T)[1:, 1:].double(), expected, rtol=1e-5, atol=1e-6)


def test_nothing_is_trained(tiny_dataset):
    model, train = build_model("ItemKNNCBF", tiny_dataset["root"])
    loss = model.calculate_loss(next(iter(train)))
    loss.backward()
    assert loss.item() == 0.0 and [n for n, _ in model.named_parameters()] == ["placeholder"]
    assert model.placeholder.grad.item() == 0.0


@pytest.mark.parametrize("knn_k, message", [
    (0, r"^knn_k is 0; it must be an integer from 1 to the number of items \(30\)"),
    (31, r"^knn_k is 31; it must be an integer from 1 to the number of items \(30\)"),
    (2.5, r"^config key knn_k: 2.5 is not allowed; knn_k must be an integer"),  # refused by the config's rules
])
def test_a_bad_neighbour_count_is_refused(tiny_dataset, knn_k, message):
    with pytest.raises(ValueError, match=message):
        build_model("ItemKNNCBF", tiny_dataset["root"], knn_k=knn_k)


def test_command_line_end_to_end_with_a_report_per_modality(tiny_dataset, tmp_path, capsys):
    argv = ["--model=ItemKNNCBF", "--dataset=tiny", f"--data_path={tiny_dataset['root']}",
            f"--checkpoint_dir={tmp_path}/saved", *fast_args(["--epochs=1"])]
    result = run_recbole_ckd.main(argv)
    assert "only_t" in capsys.readouterr().out
    assert result["model"] == "ItemKNNCBF" and 0.0 < result["test_result"]["recall@20"] <= 1.0
    assert [s["epoch"] for s in result["epoch_stats"]] == [0]  # properties/model/ItemKNNCBF.yaml: one epoch
    assert set(result["modes"]) == {"joint", "only_v", "only_t"}
    assert result["modes"]["joint"]["test"] == result["test_result"]
    assert result["modes"]["only_v"]["test"] != result["modes"]["only_t"]["test"]


@pytest.mark.parametrize("suffix", ["CKD", "MDrop", "OGMGE"])
def test_its_variants_are_refused(tiny_dataset, tmp_path, capsys, suffix):
    variant = f"ItemKNNCBF_{suffix}"
    with pytest.raises(ConfigError, match=re.escape(REFUSAL.format(variant=variant))):
        get_model(variant)
    argv = [f"--model={variant}", "--dataset=tiny", f"--data_path={tiny_dataset['root']}",
            f"--checkpoint_dir={tmp_path}/saved"]
    with pytest.raises(SystemExit) as exit_info:
        run_recbole_ckd.main(argv)
    assert exit_info.value.code == 2
    assert REFUSAL.format(variant=variant) in capsys.readouterr().err.strip().splitlines()[-1]
