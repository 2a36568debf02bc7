"""The balancing baselines by hand (modality dropout, OGM-GE) and the balancing study's page.

The contract every baseline keeps on every backbone (switched off it is its backbone, its
modality parameters) is in test_contract.py."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import build_baseline_pair, fast_config, loss_and_grads

from recbole_ckd import leaderboard as lb
from recbole_ckd.model.balancing import dropout_choice, modulation_coefficients


def build_pair(root, tmp_path, suffix, **extra):
    """Plain VBPR and its baseline in the same state, and one training batch."""
    return build_baseline_pair(root, tmp_path, "VBPR", suffix, **extra)


def margins(model, masked, users, pos, neg):
    user_reps, item_reps = model.forward(frozenset(masked))
    return (user_reps[users] * (item_reps[pos] - item_reps[neg])).sum(-1)


# ----------------------------------------------------------------------------- modality dropout
def test_dropout_masks_at_the_configured_rate_uniformly_over_modalities():
    torch.manual_seed(0)
    choice = dropout_choice(200_000, 2, 0.3, "triple")
    assert (choice > 0).float().mean().item() == pytest.approx(0.3, abs=0.005)
    for k in (1, 2):  # each modality half of the masked triples
        assert (choice == k).float().mean().item() == pytest.approx(0.15, abs=0.005)
    batches = torch.stack([dropout_choice(16, 3, 0.3, "batch") for _ in range(4000)])
    assert (batches == batches[:, :1]).all()  # one draw per batch
    assert (batches[:, 0] > 0).float().mean().item() == pytest.approx(0.3, abs=0.03)
    assert (dropout_choice(100, 2, 0.0, "triple") == 0).all()
    assert (dropout_choice(100, 2, 1.0, "triple") > 0).all()


def test_dropout_loss_and_gradients_by_hand(tiny_dataset, tmp_path):
    """BPR over each triple's drawn mode (nothing, v or t masked) plus L2 of the unmasked batch
    representations: loss and gradients equal to that formula written from full forwards."""
    plain, model, batch = build_pair(tiny_dataset["root"], tmp_path, "MDrop", mdrop_prob=0.5)
    u, i, j = batch["userID"], batch["itemID"], batch["neg_itemID"]
    choice = torch.arange(len(u)) % 3  # 0: joint, 1: modality 0 masked, 2: modality 1 masked
    model.dropout_choice = lambda n: choice
    loss, got = loss_and_grads(model, batch)

    model.zero_grad()
    modes = [set(), {model.modalities[0]}, {model.modalities[1]}]
    d = torch.stack([margins(model, masked, u, i, j) for masked in modes]).gather(0, choice[None]).squeeze(0)
    user_reps, item_reps = model.forward()
    l2 = 0.5 * (user_reps[u].pow(2).sum() + item_reps[i].pow(2).sum() + item_reps[j].pow(2).sum()) / len(u)
    expected = -F.logsigmoid(d).mean() + model.reg_weight * l2
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-7)
    for name, param in model.named_parameters():
        torch.testing.assert_close(got[name], param.grad, rtol=1e-4, atol=1e-7, msg=name)
    assert model.pop_epoch_stats()["masked_share"] == pytest.approx((choice > 0).float().mean().item())


# ----------------------------------------------------------------------------- OGM-GE
def test_modulation_coefficients_by_hand():
    k, rho = modulation_coefficients(torch.tensor([3.0, 1.0]), alpha=0.5)
    torch.testing.assert_close(rho, torch.tensor([3.0, 1 / 3]))
    torch.testing.assert_close(k, torch.tensor([1 - math.tanh(1.5), 1.0]))
    # three modalities: each against the mean of the others
    k, rho = modulation_coefficients(torch.tensor([4.0, 1.0, 1.0]), alpha=0.1)
    torch.testing.assert_close(rho, torch.tensor([4.0, 0.4, 0.4]))
    torch.testing.assert_close(k, torch.tensor([1 - math.tanh(0.4), 1.0, 1.0]))
    k, _ = modulation_coefficients(torch.tensor([2.0, 2.0]), alpha=0.1)
    torch.testing.assert_close(k, torch.ones(2))  # balanced: nothing damped


def owners(model):
    return {id(p): m for m, params in model.modality_parameters().items() for p in params}


def test_modulation_damps_only_the_dominant_modality(tiny_dataset, tmp_path):
    """k_m from the "only m" margins by hand; the dominant modality's own gradients are k times
    the backbone's, every other gradient (the other modality's, the ID embeddings') is unchanged."""
    plain, model, batch = build_pair(tiny_dataset["root"], tmp_path, "OGMGE", ogm_alpha=0.5, ogm_noise=False)
    u, i, j = batch["userID"], batch["itemID"], batch["neg_itemID"]
    with torch.no_grad():
        score = {m: torch.sigmoid(margins(model, model.only(m), u, i, j)).sum() for m in model.modalities}
    first, second = model.modalities
    rho = score[first] / score[second]
    dominant, k = (first, 1 - math.tanh(0.5 * rho)) if rho > 1 else (second, 1 - math.tanh(0.5 / rho))
    _, plain_grads = loss_and_grads(plain, batch)
    loss, got = loss_and_grads(model, batch)
    torch.testing.assert_close(loss, loss_and_grads(plain, batch)[0])
    owner = owners(model)
    damped = 0
    for name, param in model.named_parameters():
        expected = plain_grads[name] * (k if owner.get(id(param)) == dominant else 1.0)
        damped += owner.get(id(param)) == dominant
        torch.testing.assert_close(got[name], expected, rtol=1e-5, atol=1e-8, msg=name)
    assert damped > 0 and float(model.coefficients[dominant]) == pytest.approx(k, rel=1e-5)
    stats = model.pop_epoch_stats()
    assert stats[f"k_{dominant}"] == pytest.approx(k, rel=1e-5) and stats[f"rho_{dominant}"] > 1


def test_generalisation_noise_has_the_gradients_spread_and_only_modality_parameters_get_it(tiny_dataset, tmp_path):
    plain, model, batch = build_pair(tiny_dataset["root"], tmp_path, "OGMGE", ogm_alpha=0.5, ogm_noise=True)
    _, plain_grads = loss_and_grads(plain, batch)
    _, got = loss_and_grads(model, batch)
    owner = owners(model)
    for name, param in model.named_parameters():
        m = owner.get(id(param))
        if m is None:
            torch.testing.assert_close(got[name], plain_grads[name], rtol=1e-5, atol=1e-8, msg=name)
            continue
        noise = got[name] - float(model.coefficients[m]) * plain_grads[name]
        if param.numel() >= 1000:  # enough entries for the spread: N(0, std(g)^2)
            assert noise.std().item() == pytest.approx(plain_grads[name].std().item(), rel=0.1), name
            assert abs(noise.mean().item()) < 0.1 * plain_grads[name].std().item(), name


def test_no_modulation_outside_its_epochs(tiny_dataset, tmp_path):
    plain, model, batch = build_pair(tiny_dataset["root"], tmp_path, "OGMGE", ogm_alpha=0.5, ogm_epochs=[2, 3])
    _, plain_grads = loss_and_grads(plain, batch)
    for epoch, modulated in ((1, False), (2, True), (3, True), (4, False)):
        model.pre_epoch(epoch)
        _, got = loss_and_grads(model, batch)
        same = all(torch.allclose(got[n], g, rtol=1e-5, atol=1e-8) for n, g in plain_grads.items())
        assert same is not modulated, epoch
        assert (model.coefficients is not None) is modulated


# ----------------------------------------------------------------------------- the study
@pytest.mark.slow
def test_the_balancing_study_writes_every_row(tiny_dataset, tmp_path):
    entries = lb.study_entries("balancing", ["VBPR"])
    labels = [e.label for e in entries]
    assert labels == ["VBPR", "VBPR_CKD", "VBPR_CKD-no_specific", "VBPR_CKD-no_generic", "VBPR_CKD-uniform_weights",
                      "VBPR_CKD-teacher_gap", "VBPR_MDrop", "VBPR_OGMGE"]
    settings = fast_config(tiny_dataset["root"], tmp_path / "saved", epochs=2, gd_samples=9)
    out = str(tmp_path / "results")
    cells = lb.run_cells("tiny", entries, [1, 2], out, config_dict=settings, log=lambda *a: None)
    assert list(cells) == labels and all(len(records) == 2 for records in cells.values())
    ablated = cells["VBPR_CKD-no_generic"][0]
    assert ablated["model"] == "VBPR_CKD" and ablated["overrides"] == {"ckd_generic": False}
    full = cells["VBPR_CKD"][0]
    assert ablated["run_key"] != full["run_key"] and ablated["checkpoint"] != full["checkpoint"]
    assert all(row["generic"] == 0 for row in ablated["epoch_stats"]) and all(row["generic"] > 0 for row in full["epoch_stats"])
    page = lb.write_page("tiny", cells, out, study="balancing")
    assert page == os.path.join(out, "tiny-balancing.md")
    text = open(page).read()
    for label in labels:
        assert f"| {label} | " in text, label
    comparisons = text.split("## Each variant against its backbone")[1]
    for label in labels[1:]:
        assert f"| {label} | recall@20 | " in comparisons, label
    assert "| VBPR_CKD-uniform_weights | VBPR_CKD | ckd_weighting: uniform |" in text
    assert os.path.getsize(os.path.join(out, "tiny-balancing-modalities.png")) > 1000
    modes = lb.study_modes(cells)["VBPR"]
    assert {"VBPR", "teachers", "VBPR_CKD", "VBPR_MDrop", "VBPR_OGMGE"} == set(modes)
    assert set(modes["teachers"]) == {"only_v", "only_t"} and set(modes["VBPR_OGMGE"]) == {"joint", "only_v", "only_t"}
    # a second run reads every cell back
    messages = []
    lb.run_cells("tiny", entries, [1, 2], out, config_dict=settings, log=messages.append)
    assert len(messages) == 16 and all(": cached (" in m for m in messages)
