"""The balancing baselines by hand (modality dropout, OGM-GE) and the balancing study's page.

The contract every baseline keeps on every backbone (switched off it is its backbone, its
modality parameters) is in test_contract.py."""

import itertools
import math
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import build_baseline_pair, build_model, fast_config, loss_and_grads

from recbole_ckd import leaderboard as lb
from recbole_ckd.model import BACKBONES
from recbole_ckd.model.balancing import (
    dropped_modalities,
    min_norm_weights,
    modulation_coefficients,
    pareto_combination,
)
from recbole_ckd.registry import model_refusal


def build_pair(root, tmp_path, suffix, **extra):
    """Plain VBPR and its baseline in the same state, and one training batch."""
    return build_baseline_pair(root, tmp_path, "VBPR", suffix, **extra)


def margins(model, masked, users, pos, neg):
    user_reps, item_reps = model.forward(frozenset(masked))
    return (user_reps[users] * (item_reps[pos] - item_reps[neg])).sum(-1)


# ----------------------------------------------------------------------------- modality dropout
def drop_rates(dropped):
    """``{masked set (tuple of indices): share of rows}`` of a ``[rows, M]`` draw."""
    rows = [tuple(k for k, bit in enumerate(row) if bit) for row in dropped.tolist()]
    return {key: rows.count(key) / len(rows) for key in set(rows)}


@pytest.mark.parametrize("n_modalities", [2, 3])
def test_independent_dropout_masks_each_modality_on_its_own_and_keeps_one_of_all(n_modalities):
    """ModDrop: each modality masked with probability p independently; a draw of all of them keeps
    one, uniformly. So a masked set S (not all) has probability p^|S| (1-p)^(M-|S|), plus p^M / M
    when exactly one modality is kept; each modality is masked with probability p - p^M / M."""
    p, n = 0.4, 200_000
    dropped = dropped_modalities(n, n_modalities, p, rule="independent", generator=torch.Generator().manual_seed(0))
    assert dropped.shape == (n, n_modalities) and not dropped.all(dim=1).any()
    for k in range(n_modalities):
        assert dropped[:, k].float().mean().item() == pytest.approx(p - p ** n_modalities / n_modalities, abs=0.004)
    rates = drop_rates(dropped)
    for size in range(n_modalities):  # every proper subset, the empty one included
        for masked in itertools.combinations(range(n_modalities), size):
            expected = p ** size * (1 - p) ** (n_modalities - size)
            if size == n_modalities - 1:
                expected += p ** n_modalities / n_modalities  # all drawn, this one kept
            assert rates.get(masked, 0.0) == pytest.approx(expected, abs=0.004), masked
    if n_modalities == 2:  # by hand at p = 0.4: none 0.36; v alone 0.24 + 0.08; t alone the same
        assert rates[()] == pytest.approx(0.36, abs=0.004) and rates[(0,)] == pytest.approx(0.32, abs=0.004)
    if n_modalities == 3:  # a pair masked together: drawn so with the third kept, or all drawn and the third kept
        both = (dropped[:, 0] & dropped[:, 1]).float().mean().item()
        assert both == pytest.approx(p * p * (1 - p) + p ** 3 / 3, abs=0.004)
    assert dropped_modalities(100, n_modalities, 1.0, rule="independent").sum(dim=1).eq(n_modalities - 1).all()
    assert not dropped_modalities(100, n_modalities, 0.0, rule="independent").any()


def test_one_of_dropout_masks_one_modality_at_the_configured_rate():
    """The rule before mdrop_rule: with probability p one modality, drawn uniformly, is masked."""
    dropped = dropped_modalities(200_000, 2, 0.3, rule="one_of", generator=torch.Generator().manual_seed(0))
    assert dropped.any(dim=1).float().mean().item() == pytest.approx(0.3, abs=0.005)
    assert dropped.sum(dim=1).max().item() == 1
    for k in (0, 1):  # each modality half of the masked triples
        assert dropped[:, k].float().mean().item() == pytest.approx(0.15, abs=0.005)
    generator = torch.Generator().manual_seed(1)
    batches = torch.stack([dropped_modalities(16, 3, 0.3, "batch", "one_of", generator) for _ in range(4000)])
    assert (batches == batches[:, :1]).all()  # one draw per batch
    assert batches[:, 0].any(dim=1).float().mean().item() == pytest.approx(0.3, abs=0.03)
    assert dropped_modalities(100, 2, 1.0, rule="one_of").any(dim=1).all()


def test_one_of_dropout_draws_what_it_drew_before_the_rule_existed():
    """Cells computed before mdrop_rule keep their run key, so the legacy rule must draw the same
    triples' masks from the same random stream as the code then: a uniform per triple, then a
    modality per triple."""
    torch.manual_seed(7)
    masked = torch.rand(50) < 0.5
    which = torch.randint(2, (50,))
    torch.manual_seed(7)
    dropped = dropped_modalities(50, 2, 0.5, rule="one_of")
    assert torch.equal(dropped.any(dim=1), masked) and torch.equal(dropped[masked].long().argmax(dim=1), which[masked])


@pytest.mark.parametrize("rule, masks", [("one_of", [(), (0,), (1,)]), ("independent", [(), (0,), (1,)])])
def test_dropout_loss_and_gradients_by_hand(tiny_dataset, tmp_path, rule, masks):
    """BPR over each triple's drawn mode (nothing, v or t masked) plus L2 of the unmasked batch
    representations: loss and gradients equal to that formula written from full forwards."""
    plain, model, batch = build_pair(tiny_dataset["root"], tmp_path, "MDrop", mdrop_prob=0.5, mdrop_rule=rule)
    u, i, j = batch["userID"], batch["itemID"], batch["neg_itemID"]
    choice = torch.arange(len(u)) % len(masks)
    dropped = torch.zeros(len(u), 2, dtype=torch.bool)
    for row, k in enumerate(choice.tolist()):
        dropped[row, list(masks[k])] = True
    model.dropped_modalities = lambda n: dropped
    loss, got = loss_and_grads(model, batch)

    model.zero_grad()
    modes = [{model.modalities[k] for k in mask} for mask in masks]
    d = torch.stack([margins(model, masked, u, i, j) for masked in modes]).gather(0, choice[None]).squeeze(0)
    user_reps, item_reps = model.forward()
    l2 = 0.5 * (user_reps[u].pow(2).sum() + item_reps[i].pow(2).sum() + item_reps[j].pow(2).sum()) / len(u)
    expected = -F.logsigmoid(d).mean() + model.reg_weight * l2
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-7)
    for name, param in model.named_parameters():
        torch.testing.assert_close(got[name], param.grad, rtol=1e-4, atol=1e-7, msg=name)
    stats = model.pop_epoch_stats()
    assert stats["masked_share"] == pytest.approx((choice > 0).float().mean().item())
    assert stats[f"masked_{model.modalities[0]}"] == pytest.approx((choice == 1).float().mean().item())


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


def owners(model, scope):
    return {id(p): m for m, params in model.modulated_parameters(scope).items() for p in params}


@pytest.mark.parametrize("scope", ["encoders", "all"])
def test_modulation_damps_only_the_dominant_modality(tiny_dataset, tmp_path, scope):
    """k_m from the "only m" margins by hand; the dominant modality's modulated gradients are k
    times the backbone's, every other gradient (the other modality's, the ID embeddings', and with
    ``encoders`` the modality's own tables and biases) is unchanged."""
    plain, model, batch = build_pair(tiny_dataset["root"], tmp_path, "OGMGE", ogm_alpha=0.5, ogm_noise=False,
                                     ogm_scope=scope)
    u, i, j = batch["userID"], batch["itemID"], batch["neg_itemID"]
    with torch.no_grad():
        score = {m: torch.sigmoid(margins(model, model.only(m), u, i, j)).sum() for m in model.modalities}
    first, second = model.modalities
    rho = score[first] / score[second]
    dominant, k = (first, 1 - math.tanh(0.5 * rho)) if rho > 1 else (second, 1 - math.tanh(0.5 / rho))
    _, plain_grads = loss_and_grads(plain, batch)
    loss, got = loss_and_grads(model, batch)
    torch.testing.assert_close(loss, loss_and_grads(plain, batch)[0])
    owner = owners(model, scope)
    damped = set()
    for name, param in model.named_parameters():
        expected = plain_grads[name] * (k if owner.get(id(param)) == dominant else 1.0)
        if owner.get(id(param)) == dominant:
            damped.add(name)
        torch.testing.assert_close(got[name], expected, rtol=1e-5, atol=1e-8, msg=name)
    # VBPR's modality m: its projection (weight, bias) and its users' preference table
    if scope == "encoders":
        assert damped == {f"projection.{dominant}.weight"}
    else:
        assert damped == {f"projection.{dominant}.weight", f"projection.{dominant}.bias", f"user_preference.{dominant}.weight"}
    assert float(model.coefficients[dominant]) == pytest.approx(k, rel=1e-5)
    stats = model.pop_epoch_stats()
    assert stats[f"k_{dominant}"] == pytest.approx(k, rel=1e-5) and stats[f"rho_{dominant}"] > 1


@pytest.mark.parametrize("scope", ["encoders", "all"])
def test_generalisation_noise_has_the_gradients_spread_and_only_modulated_parameters_get_it(tiny_dataset, tmp_path,
                                                                                           scope):
    """GE: N(0, std(g)^2) on every entry of each modulated tensor, both modalities; with
    ``encoders`` no ID or feature table and no bias gets noise or modulation."""
    plain, model, batch = build_pair(tiny_dataset["root"], tmp_path, "OGMGE", ogm_alpha=0.5, ogm_noise=True,
                                     ogm_scope=scope)
    _, plain_grads = loss_and_grads(plain, batch)
    _, got = loss_and_grads(model, batch)
    owner = owners(model, scope)
    noisy = set()
    for name, param in model.named_parameters():
        m = owner.get(id(param))
        if m is None:
            torch.testing.assert_close(got[name], plain_grads[name], rtol=1e-5, atol=1e-8, msg=name)
            continue
        noisy.add(name)
        noise = got[name] - float(model.coefficients[m]) * plain_grads[name]
        assert (noise != 0).all(), name  # every entry, the rows no triple reached included
        if param.numel() >= 300:  # enough entries for the spread: N(0, std(g)^2)
            assert noise.std().item() == pytest.approx(plain_grads[name].std().item(), rel=0.12), name
            assert abs(noise.mean().item()) < 0.15 * plain_grads[name].std().item(), name
    assert all(".weight" in name and "user_preference" not in name for name in noisy) is (scope == "encoders")
    assert {name.split(".")[1] for name in noisy} == set(model.modalities)  # the dominated modality too


@pytest.mark.parametrize("backbone", [cls.__name__ for cls in BACKBONES if model_refusal(f"{cls.__name__}_OGMGE") is None])
def test_ogm_modulates_encoder_weights_and_never_a_table(tiny_dataset, tmp_path, backbone):
    """Every backbone's OGM-GE (ogm_scope: encoders) modulates, for each modality, some weight
    tensors of that modality's own parameters, and never an embedding, a feature table or a
    per-user preference table (nothing with a row per user or per item)."""
    model, _ = build_model(f"{backbone}_OGMGE", tiny_dataset["root"], tmp_path / "saved")
    embeddings = {id(module.weight) for module in model.modules() if isinstance(module, torch.nn.Embedding)}
    own = model.modality_parameters()
    for m, params in model.modulated_parameters("encoders").items():
        assert params, m
        for p in params:
            assert p.dim() >= 2 and any(p is q for q in own[m]), m
            assert id(p) not in embeddings and p.shape[0] not in (model.n_users, model.n_items), (m, p.shape)


def test_no_modulation_outside_its_epochs(tiny_dataset, tmp_path):
    plain, model, batch = build_pair(tiny_dataset["root"], tmp_path, "OGMGE", ogm_alpha=0.5, ogm_epochs=[2, 3])
    _, plain_grads = loss_and_grads(plain, batch)
    for epoch, modulated in ((1, False), (2, True), (3, True), (4, False)):
        model.pre_epoch(epoch)
        _, got = loss_and_grads(model, batch)
        same = all(torch.allclose(got[n], g, rtol=1e-5, atol=1e-8) for n, g in plain_grads.items())
        assert same is not modulated, epoch
        assert (model.coefficients is not None) is modulated


# ----------------------------------------------------------------------------- MMPareto
def test_pareto_combination_of_two_conflicting_gradients_by_hand():
    """g1 = (1, 0), g2 = (-1, 1): cosine below 0, so the min-norm weights: w1 = (g2.g2 - g1.g2) /
    |g1 - g2|^2 = 3/5; direction 2 (3/5 g1 + 2/5 g2) = (0.4, 0.8), shorter than g1 + g2 = (0, 1),
    so scaled to length 1, then by 1.5."""
    combined, conflict = pareto_combination([[torch.tensor([1.0, 0.0])], [torch.tensor([-1.0, 1.0])]])
    assert conflict
    torch.testing.assert_close(combined[0], 1.5 * torch.tensor([0.4, 0.8]) / math.sqrt(0.8))
    torch.testing.assert_close(min_norm_weights(torch.tensor([[1.0, -1.0], [-1.0, 2.0]])), torch.tensor([0.6, 0.4]))


def test_pareto_combination_of_two_agreeing_gradients_is_their_sum_times_gamma():
    """g1 = (1, 0), g2 = (1, 1) on one tensor and (0, 2), (1, 0) on another: every cosine of the
    flattened gradients is positive, so equal weights: each tensor's plain sum, times 1.5."""
    combined, conflict = pareto_combination([[torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])],
                                             [torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])]])
    assert not conflict
    torch.testing.assert_close(combined[0], torch.tensor([3.0, 1.5]))
    torch.testing.assert_close(combined[1], torch.tensor([1.5, 3.0]))


def test_min_norm_weights_of_three_gradients():
    gram = lambda vectors: vectors @ vectors.T  # noqa: E731
    balanced = min_norm_weights(gram(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])))
    torch.testing.assert_close(balanced, torch.full((3,), 1 / 3))  # their mean is 0
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    weights = min_norm_weights(gram(vectors))
    assert weights.sum().item() == pytest.approx(1) and (weights >= 0).all()
    assert (weights @ vectors).norm().item() ** 2 == pytest.approx(0.5, abs=1e-6)  # at w = (1/2, 1/2, 0)


def test_pareto_gradients_of_a_model_follow_the_rule(tiny_dataset, tmp_path):
    """VBPR_MMPareto's loss is the joint objective plus each "only m" BPR; each gradient is the rule
    applied to the losses' own gradients: modality m's parameters over (joint, only m), the
    shared ones over all three."""
    plain, model, batch = build_pair(tiny_dataset["root"], tmp_path, "MMPareto")
    u, i, j = batch["userID"], batch["itemID"], batch["neg_itemID"]
    loss, got = loss_and_grads(model, batch)
    joint = plain.calculate_loss(batch)
    only = {m: -F.logsigmoid(margins(model, model.only(m), u, i, j)).mean() for m in model.modalities}
    torch.testing.assert_close(loss, (joint + sum(only.values())).detach(), rtol=1e-5, atol=1e-7)
    names = [n for n, _ in model.named_parameters()]
    grad_of = {}
    for name, value in {"joint": joint, **only}.items():
        source = plain if name == "joint" else model
        found = torch.autograd.grad(value, list(source.parameters()), allow_unused=True)
        grad_of[name] = {n: torch.zeros_like(p) if g is None else g
                         for (n, p), g in zip(source.named_parameters(), found)}
    for m in model.modalities:
        members = [n for n in names if m in n.split(".")]
        expected, _ = pareto_combination([[grad_of[k][n] for n in members] for k in ("joint", m)])
        for n, e in zip(members, expected):
            torch.testing.assert_close(got[n], e, rtol=1e-4, atol=1e-7, msg=n)
    shared = [n for n in names if not any(m in n.split(".") for m in model.modalities)]
    expected, _ = pareto_combination([[grad_of[k][n] for n in shared] for k in ("joint", *model.modalities)])
    for n, e in zip(shared, expected):
        torch.testing.assert_close(got[n], e, rtol=1e-4, atol=1e-7, msg=n)
    assert set(model.pop_epoch_stats()) >= {"conflict_shared", *(f"conflict_{m}" for m in model.modalities)}


# ----------------------------------------------------------------------------- run keys
def test_a_later_key_enters_the_run_key_only_away_from_its_legacy_value(tiny_dataset):
    """A cell computed before a key existed keeps its run key while the key is at its legacy value;
    a new default (mdrop_rule: independent, ogm_scope: encoders) gives another run key, so no cell
    of the old rule is ever served for the new one. A model that does not read a key keeps its
    run key whatever the key's value."""
    import copy

    from recbole_ckd.config import Config
    from recbole_ckd.run_keys import LATER_KEYS, config_key
    from recbole_ckd.settings_files import properties_dir, read_yaml

    assert set(LATER_KEYS) <= set(read_yaml(properties_dir() / "overall.yaml"))
    settings = fast_config(tiny_dataset["root"])
    for model, key, legacy in (("VBPR_MDrop", "mdrop_rule", "one_of"), ("VBPR_OGMGE", "ogm_scope", "all")):
        assert LATER_KEYS[key].legacy == legacy
        at_legacy = Config(model, "tiny", config_dict={**settings, key: legacy})
        before_the_keys = copy.copy(at_legacy)
        before_the_keys.final_config_dict = {k: v for k, v in at_legacy.final_config_dict.items() if k not in LATER_KEYS}
        assert config_key(at_legacy) == config_key(before_the_keys)
        default = Config(model, "tiny", config_dict=settings)
        assert default[key] != legacy and config_key(default) != config_key(at_legacy)
        plain = [config_key(Config(name, "tiny", config_dict={**settings, key: value}))
                 for name in ("VBPR", "VBPR_CKD") for value in (legacy, default[key])]
        assert plain[0] == plain[1] and plain[2] == plain[3]
    assert config_key(Config("VBPR_MDrop", "tiny", config_dict={**settings, "mdrop_prob": 0.3})) != config_key(
        Config("VBPR_MDrop", "tiny", config_dict=settings))


# ----------------------------------------------------------------------------- the study
@pytest.mark.slow
def test_the_balancing_study_writes_every_row(tiny_dataset, tmp_path):
    entries = lb.study_entries("balancing", ["VBPR"])
    labels = [e.label for e in entries]
    assert labels == ["VBPR", "VBPR_CKD", "VBPR_CKD-no_specific", "VBPR_CKD-no_generic", "VBPR_CKD-uniform_weights",
                      "VBPR_CKD-teacher_gap", "VBPR_MDrop", "VBPR_OGMGE", "VBPR_MMPareto"]
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
    # each row in words, with the rule it ran with
    assert ("| VBPR_MDrop | modality dropout (ModDrop, Neverova et al., TPAMI 2016), ModDrop's rule, each modality "
            "dropped independently (one kept when all are drawn), p = 0.5 per triple |") in text
    assert ("| VBPR_OGMGE | on-the-fly gradient modulation (OGM-GE, Peng et al., CVPR 2022) on each modality's dense "
            "encoder weights, alpha 0.1, epochs 0-50 |") in text
    assert ("| VBPR_MMPareto | Pareto integration of the joint and each \"only m\" loss's gradients (MMPareto, Wei and Hu, "
            "ICML 2024) |") in text
    assert "| VBPR_CKD-no_generic | counterfactual knowledge distillation (CKD, Zhang et al., ACM MM 2024): specific term," in text
    assert os.path.getsize(os.path.join(out, "tiny-balancing-modalities.png")) > 1000
    modes = lb.study_modes(cells)["VBPR"]
    assert {"VBPR", "teachers", "VBPR_CKD", "VBPR_MDrop", "VBPR_OGMGE", "VBPR_MMPareto"} == set(modes)
    assert set(modes["teachers"]) == {"only_v", "only_t"} and set(modes["VBPR_OGMGE"]) == {"joint", "only_v", "only_t"}
    # a second run reads every cell back
    messages = []
    lb.run_cells("tiny", entries, [1, 2], out, config_dict=settings, log=messages.append)
    assert len(messages) == 18 and all(": cached (" in m for m in messages)
