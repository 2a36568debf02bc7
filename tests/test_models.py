"""VBPR and MMGCN against the reference formulas, and end-to-end runs through the entry point."""

import pytest
import torch
from conftest import build_eval_model, build_model, fast_args, scores

import run_recbole_ckd
from recbole_ckd.compat import load_checkpoint
from recbole_ckd.config import Config


def test_masked_modality_adds_a_constant_to_every_score(tiny_dataset):
    model = build_eval_model("VBPR", tiny_dataset["root"])[0]
    d, dm = model.user_id_embedding.embedding_dim, model.user_preference["v"].embedding_dim
    v_slot = slice(d, d + dm)  # v is the first modality branch
    with torch.no_grad():
        users, items = model.forward(frozenset({"v"}))
    contribution = users[:, v_slot] @ items[:, v_slot].T
    torch.testing.assert_close(contribution, torch.full_like(contribution, contribution[1, 1].item()))
    # hence every margin equals the margin without v's branch at all
    rest = [i for i in range(users.shape[1]) if not d <= i < d + dm]
    without_v = users[:, rest] @ items[:, rest].T
    full = users @ items.T
    torch.testing.assert_close(full[:, 2:] - full[:, 1:2], without_v[:, 2:] - without_v[:, 1:2])


def test_active_modalities_make_a_teacher_mode(tiny_dataset):
    model = build_eval_model("VBPR", tiny_dataset["root"], active_modalities=["t"])[0]
    assert model.default_masked == frozenset({"v"}) == model.only("t")
    users, items = model.eval_tables()
    torch.testing.assert_close(users @ items.T, scores(model, "v"))


def run_cli(model, root, tmp_path, *extra):
    argv = [f"--model={model}", "--dataset=tiny", f"--data_path={root}", f"--checkpoint_dir={tmp_path}/saved"]
    argv += fast_args() + list(extra)
    return run_recbole_ckd.main(argv)


def check_result(result, model, tmp_path, protocol="train"):
    assert result["model"] == model and result["test_masking"] == protocol
    for split in ("valid_result", "test_result"):
        assert set(result[split]) == {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map", "hit") for k in (10, 20)}
        assert all(0.0 <= v <= 1.0 for v in result[split].values())
    assert result["best_valid_score"] == result["valid_result"]["recall@20"]
    assert result["checkpoint"].startswith(f"tiny/{model}-")  # relative to checkpoint_dir: the same on every machine
    state = load_checkpoint(tmp_path / "saved" / result["checkpoint"])
    assert state["model"] == model and state["epoch"] == 0


def test_vbpr_end_to_end(tiny_dataset, tmp_path):
    check_result(run_cli("VBPR", tiny_dataset["root"], tmp_path), "VBPR", tmp_path)


def test_recbole_bpr_end_to_end(tiny_dataset, tmp_path):
    check_result(run_cli("BPR", tiny_dataset["root"], tmp_path), "BPR", tmp_path)


def test_recbole_lightgcn_end_to_end(tiny_dataset, tmp_path):
    check_result(run_cli("LightGCN", tiny_dataset["root"], tmp_path, "--test_masking=train_valid"), "LightGCN", tmp_path, "train_valid")


def test_command_line_overrides_reach_the_config(tiny_dataset):
    config = Config(
        "VBPR", "tiny", config_dict={"data_path": tiny_dataset["root"], "learning_rate": 0.1},
        cmd_args=["--learning_rate=0.05", "--topk=[5]", "--valid_metric=Recall@5", "--modality_embedding_size=8"],
    )
    assert config["learning_rate"] == 0.05 and config["topk"] == [5] and config["modality_embedding_size"] == 8


@pytest.mark.slow
def test_shipped_dataset_runs_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local dataset/ folder: the shipped copy is used
    result = run_recbole_ckd.main(
        ["--model=VBPR", "--dataset=ml-100k-mm", "--epochs=1", "--show_progress=False", "--state=WARNING", "--use_gpu=False"]
    )
    assert result["test_result"]["recall@20"] > 0.02  # far above random ranking (about 0.012)


# ----------------------------------------------------------------------------- the CKD reference's formulas



def test_vbpr_is_the_reference_formula_with_equal_blocks(tiny_dataset):
    model = build_eval_model("VBPR", tiny_dataset["root"])[0]
    f = {m: model.feature(m) for m in ("v", "t")}
    P = {m: model.user_preference[m].weight.detach() for m in ("v", "t")}
    W = {m: model.projection[m] for m in ("v", "t")}
    for masked in (frozenset(), {"v"}, {"t"}):
        with torch.no_grad():
            users, items = model.forward(frozenset(masked))
            user_blocks, item_blocks = [model.user_id_embedding.weight], [model.item_id_embedding.weight]
            for m in ("v", "t"):
                pref, feat = P[m], f[m]
                if m in masked:  # the reference: mean preference over users, mean feature over items, tiled
                    pref = pref[1:].mean(0, keepdim=True).expand_as(pref)
                    feat = feat[1:].mean(0, keepdim=True).expand_as(feat)
                user_blocks.append(pref)
                item_blocks.append(W[m](feat))
        assert users.shape == (model.n_users, 3 * 64) and items.shape == (model.n_items, 3 * 64)
        torch.testing.assert_close(users, torch.cat(user_blocks, 1))
        torch.testing.assert_close(items, torch.cat(item_blocks, 1))


def dense_self_loop_mean(dataset, n_users, n_items):
    """``D^-1 (A + I)`` of the user-item graph, dense."""
    inter = dataset.inter_matrix(form="coo")
    n = n_users + n_items
    a = torch.zeros(n, n)
    a[inter.row, inter.col + n_users] = 1.0
    a[inter.col + n_users, inter.row] = 1.0
    a += torch.eye(n)
    return a / a.sum(1, keepdim=True)


@pytest.mark.parametrize("masked", [frozenset(), frozenset({"v"}), frozenset({"t"})])
def test_mmgcn_is_the_reference_formula(tiny_dataset, masked):
    import torch.nn.functional as F

    model, train = build_model("MMGCN", tiny_dataset["root"])
    model.eval()
    dataset = train.dataset
    graph = dense_self_loop_mean(dataset, model.n_users, model.n_items)
    outputs = []
    with torch.no_grad():
        for m in ("v", "t"):
            branch = model.branches[m]
            pref, feat = branch.user_preference, model.feature(m)
            if m in masked:
                pref = pref[1:].mean(0, keepdim=True).expand_as(pref)
                feat = feat[1:].mean(0, keepdim=True).expand_as(feat)
            x = F.normalize(torch.cat([pref, branch.projection(feat)]), dim=1)
            assert len(branch.conv) == 3 and x.shape[1] == 64  # three layers over a 64-d projection
            for conv, linear, gate in zip(branch.conv, branch.linear, branch.gate):
                h = F.leaky_relu(graph @ conv(x))
                x = F.leaky_relu(gate(h) + F.leaky_relu(linear(x)) + model.id_embedding)
            outputs.append(x)
        expected = ((outputs[0] + outputs[1]) / 2).split([model.n_users, model.n_items])
        users, items = model.forward(masked)
    torch.testing.assert_close(users, expected[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items, expected[1], rtol=1e-5, atol=1e-6)


def test_mmgcn_reference_preferences_are_fixed_but_kept_in_checkpoints(tiny_dataset):
    trained, _ = build_model("MMGCN", tiny_dataset["root"])
    fixed, _ = build_model("MMGCN", tiny_dataset["root"], train_preference=False)
    assert "branches.v.user_preference" in dict(trained.named_parameters())
    assert "branches.v.user_preference" not in dict(fixed.named_parameters())
    assert "branches.v.user_preference" in fixed.state_dict()


def test_recbole_models_keep_recboles_dynamic_negative_sampling(tiny_dataset, tmp_path, monkeypatch):
    # RecBole's loop hands the model to a dynamic sampler (train_data.get_model); the plugin's
    # trainer extends that loop, so hard negatives are scored by the model being trained
    from recbole.model.general_recommender import BPR

    scored, real_predict = [], BPR.predict  # full-sort evaluation never calls predict: only the sampler does
    monkeypatch.setattr(BPR, "predict", lambda model, batch: scored.append(model) or real_predict(model, batch))
    sampling = "{'distribution': 'uniform', 'sample_num': 1, 'dynamic': True, 'candidate_num': 3}"
    result = run_cli("BPR", tiny_dataset["root"], tmp_path, f"--train_neg_sample_args={sampling}")
    check_result(result, "BPR", tmp_path)
    assert scored and all(model is scored[0] and isinstance(model, BPR) for model in scored)
