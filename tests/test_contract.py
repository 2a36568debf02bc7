"""The contract every backbone and its CKD student keep, checked for every registered backbone
(a new backbone is covered without writing a test): the student's objective is the backbone's
whole objective plus ``kd_weight`` times the distillation term, nothing removed."""

import pytest
import torch
from conftest import (
    attach_random_teachers,
    build_baseline_pair,
    build_model,
    fast_config,
    loss_and_grads,
    scores,
    write_tiny_mmrec,
)
from recbole.data.interaction import Interaction

from recbole_ckd.compat import load_checkpoint
from recbole_ckd.config import Config
from recbole_ckd.data.dataset import data_preparation
from recbole_ckd.model import BACKBONES, MODELS
from recbole_ckd.quick_start import run
from recbole_ckd.registry import create_dataset

# nothing left open: a leaked file or socket fails the test (its warning is raised in a finaliser,
# which pytest reports as an unraisable-exception warning)
pytestmark = [pytest.mark.filterwarnings("error::ResourceWarning"),
              pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")]

RANKING_BACKBONES = [cls.__name__ for cls in BACKBONES if cls.ranks_with_modalities]
STUDENT_BACKBONES = [cls.__name__ for cls in BACKBONES if cls.ranks_with_modalities and cls.trains]
# OGM-GE modulates each modality's own parameters: a backbone without any has no OGMGE variant
MODULATED_BACKBONES = [name for name in STUDENT_BACKBONES if MODELS[name].has_modality_parameters]
ALL_MODELS = [cls.__name__ for cls in BACKBONES] + [
    f"{name}_{suffix}" for suffix in ("CKD", "MDrop", "MMPareto") for name in STUDENT_BACKBONES
] + [f"{name}_OGMGE" for name in MODULATED_BACKBONES]
BASELINE_CASES = [(name, "MDrop", {"mdrop_prob": 0.0}) for name in STUDENT_BACKBONES] + [
    (name, "OGMGE", {"ogm_alpha": 0.0, "ogm_noise": False}) for name in MODULATED_BACKBONES
]
# the CKD ablation switches (docs/method.md, section 8) and what the reference formula then computes
ABLATIONS = {
    "no_specific": ({"ckd_specific": False}, {"specific": False}),
    "no_generic": ({"ckd_generic": False}, {"generic": False}),
    "uniform_weights": ({"ckd_weighting": "uniform"}, {"weighting": "uniform"}),
    "teacher_gap": ({"ckd_weighting": "teacher_gap"}, {"weighting": "teacher_gap"}),
}
# settings that change how a backbone uses its features, checked by the masking contract too
VARIANTS = {
    "MGCN": [{"train_features": False}],
    "GRCN": [{"n_routing": 0}],
    "MMGCN": [{"train_preference": False}],
    # a threshold low enough that the tiny graph has fused and unfused edges (see test_egogcn.py)
    "EgoGCN": [{"alpha_threshold": 0.105}, {"modulation": "soft"}, {"alpha_threshold": 0.105, "masked_fusion": "drop"}],
}
MASKING_CASES = [(name, {}) for name in RANKING_BACKBONES] + [
    (name, extra) for name, extras in VARIANTS.items() for extra in extras if name in RANKING_BACKBONES
]


def build(name, root, tmp_path, **extra):
    return build_model(name, root, tmp_path / "saved", gd_samples=9, **extra)


def build_pair(root, tmp_path, backbone, **extra):
    """A plain backbone and its student in the same state (the student loads the backbone's
    parameters), random frozen teacher tables, and one training batch."""
    settings = fast_config(root, tmp_path / "saved", gd_samples=9, **extra)
    config = Config(backbone, "tiny", config_dict=settings)
    train, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    plain = MODELS[backbone](config, train.dataset)
    students = {}
    for kd_weight in (0.0, 0.5):
        student_config = Config(f"{backbone}_CKD", "tiny", config_dict={**settings, "kd_weight": kd_weight})
        student = MODELS[f"{backbone}_CKD"](student_config, train.dataset)
        student.load_state_dict(plain.state_dict())
        students[kd_weight] = attach_random_teachers(student)
    return plain, students, next(iter(train))


def reference_distillation(student, batch, triples, specific=True, generic=True, weighting="counterfactual"):
    """The distillation term from the full tables of every mode (docs/method.md, sections 4 and
    8, two modalities), with the ablation switches' terms left out."""
    with torch.no_grad():
        tables = {name: student.forward(masked) for name, masked in student.modes().items()}
    tables.update(student.teacher_tables)
    u, i, j = batch["userID"], batch["itemID"], batch["neg_itemID"]
    gu, ga, gb = triples

    def d(name, users, a, b):
        U, I = tables[name]
        return (U[users] * (I[a] - I[b])).sum(1)

    v, t = student.modalities.index("v"), student.modalities.index("t")
    assert {v, t} == {0, 1}
    d_j = d("joint", u, i, j)
    if weighting == "counterfactual":
        c_t = ((d_j - d("only_v", u, i, j)) / d("only_t", u, i, j)).nan_to_num(nan=1e-8).clamp(1e-8, 10)
        c_v = ((d_j - d("only_t", u, i, j)) / d("only_v", u, i, j)).nan_to_num(nan=1e-8).clamp(1e-8, 10)
    else:  # teacher_gap
        c_t, c_v = ((torch.sigmoid(d(f"only_{m}", u, i, j)) / torch.sigmoid(d(m, u, i, j))).clamp(1e-8, 10)
                    for m in ("t", "v"))
    weight = {"t": 2 * c_v / (c_t + c_v), "v": 2 * c_t / (c_t + c_v)} if weighting != "uniform" else {"t": 1, "v": 1}
    tau, total = student.kd_temperature, 0.0
    for m in ("v", "t"):
        term = torch.relu(d(m, u, i, j) - d(f"only_{m}", u, i, j)) if specific else torch.zeros_like(d_j)
        if generic:
            p_t, p_s = torch.sigmoid(d(m, gu, ga, gb) / tau), torch.sigmoid(d(f"only_{m}", gu, ga, gb) / tau)
            term = term + student.gd_weight * -(p_t * torch.log(p_s + 1e-8) + (1 - p_t) * torch.log(1 - p_s + 1e-8)).mean()
        total = total + weight[m] * term
    return total.mean()


@pytest.mark.parametrize("backbone", STUDENT_BACKBONES)
def test_student_with_kd_weight_zero_is_its_backbone(tiny_dataset, tmp_path, backbone):
    plain, students, batch = build_pair(tiny_dataset["root"], tmp_path, backbone)
    plain_loss, plain_grads = loss_and_grads(plain, batch)
    student_loss, student_grads = loss_and_grads(students[0.0], batch)
    assert student_loss == plain_loss
    assert set(student_grads) == set(plain_grads)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(student_grads[name], grad, rtol=0, atol=0, msg=name)
    assert students[0.0].last_loss_terms.keys() == plain.last_loss_terms.keys()


@pytest.mark.parametrize("backbone", STUDENT_BACKBONES)
def test_student_adds_exactly_kd_weight_times_the_distillation(tiny_dataset, tmp_path, backbone):
    plain, students, batch = build_pair(tiny_dataset["root"], tmp_path, backbone)
    student = students[0.5]
    triples = student.generic_triples()
    student.generic_triples = lambda: triples
    plain_loss = plain.calculate_loss(batch).detach()
    student_loss = student.calculate_loss(batch).detach()
    expected = 0.5 * reference_distillation(student, batch, triples)
    torch.testing.assert_close(student_loss - plain_loss, expected, rtol=1e-4, atol=1e-6)
    # every term of the backbone's objective is in the student's loss, with the same value
    backbone_terms = set(plain.last_loss_terms) - {"loss"}
    assert backbone_terms <= set(student.last_loss_terms)
    for name in backbone_terms:
        torch.testing.assert_close(student.last_loss_terms[name], plain.last_loss_terms[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backbone", STUDENT_BACKBONES)
def test_each_ablation_switch_changes_exactly_its_term(tiny_dataset, tmp_path, backbone):
    """The student's loss minus the backbone's is kd_weight times the reference distillation
    with that switch's piece left out; every backbone term stays as it is."""
    for name, (switch, reference) in ABLATIONS.items():
        plain, students, batch = build_pair(tiny_dataset["root"], tmp_path / name, backbone, **switch)
        student = students[0.5]
        triples = student.generic_triples()
        student.generic_triples = lambda: triples
        plain_loss = plain.calculate_loss(batch).detach()
        student_loss = student.calculate_loss(batch).detach()
        expected = 0.5 * reference_distillation(student, batch, triples, **reference)
        torch.testing.assert_close(student_loss - plain_loss, expected, rtol=1e-4, atol=1e-6, msg=name)
        for term in set(plain.last_loss_terms) - {"loss"}:
            torch.testing.assert_close(student.last_loss_terms[term], plain.last_loss_terms[term], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backbone, suffix, off", BASELINE_CASES, ids=[f"{b}_{s}" for b, s, _ in BASELINE_CASES])
def test_a_baseline_switched_off_is_its_backbone(tiny_dataset, tmp_path, backbone, suffix, off):
    """Modality dropout with probability 0 and OGM with alpha 0 (k = 1) and no noise train
    exactly what the backbone trains: the same loss terms and the same gradients."""
    plain, baseline, batch = build_baseline_pair(tiny_dataset["root"], tmp_path, backbone, suffix, **off)
    plain_loss, plain_grads = loss_and_grads(plain, batch)
    baseline_loss, baseline_grads = loss_and_grads(baseline, batch)
    torch.testing.assert_close(baseline_loss, plain_loss, rtol=1e-6, atol=0)
    assert baseline_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(baseline_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert set(plain.last_loss_terms) <= set(baseline.last_loss_terms)


@pytest.mark.parametrize("backbone", MODULATED_BACKBONES)
def test_modality_parameters_are_disjoint_and_drive_their_modality(tiny_dataset, tmp_path, backbone):
    """What OGM-GE modulates: every modality owns some parameters, none is owned twice, and
    moving modality m's parameters changes the "only m" scores or, where they serve only an
    auxiliary term (FREEDOM ranks through a graph fixed from the raw features), the loss."""
    model, train = build(backbone, tiny_dataset["root"], tmp_path)
    batch = next(iter(train))
    groups = model.modality_parameters()
    assert set(groups) == set(model.modalities) and all(groups.values())
    owned = [id(p) for params in groups.values() for p in params]
    assert len(owned) == len(set(owned))

    def outputs(m):
        model.eval()
        with torch.no_grad():
            only_scores = scores(model, model.only(m))
            torch.manual_seed(3)
            return only_scores, model.train().calculate_loss(batch)

    for m, params in groups.items():
        before = outputs(m)
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p))
        after = outputs(m)
        assert not (torch.allclose(after[0], before[0], atol=1e-4) and torch.allclose(after[1], before[1])), m
        with torch.no_grad():
            for p, value in zip(params, saved):
                p.copy_(value)


# ----------------------------------------------------------------------------- representations

@pytest.mark.parametrize("backbone, extra", MASKING_CASES, ids=[f"{n}-{e}" if e else n for n, e in MASKING_CASES])
def test_masked_outputs_ignore_the_masked_features(tmp_path, backbone, extra):
    """Permuting modality m's feature rows changes nothing once m is masked (the tables
    themselves, not only the scores), and changes the joint and the "only m" outputs."""
    _, df, features = write_tiny_mmrec(str(tmp_path / "original"))
    rows = list(df.itertuples(index=False, name=None))
    original, _ = build(backbone, str(tmp_path / "original"), tmp_path, **extra)
    original.eval()
    order = torch.randperm(len(features["v"]), generator=torch.Generator().manual_seed(1)).numpy()
    for m, other in (("v", "t"), ("t", "v")):
        permuted_features = {**features, m: features[m][order]}
        write_tiny_mmrec(str(tmp_path / f"permuted_{m}"), rows=rows, features=permuted_features)
        permuted, _ = build(backbone, str(tmp_path / f"permuted_{m}"), tmp_path, **extra)
        permuted.eval()
        with torch.no_grad():
            for a, b in zip(original.forward(frozenset({m})), permuted.forward(frozenset({m}))):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(scores(original, {"v", "t"}), scores(permuted, {"v", "t"}), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(scores(original, set()), scores(permuted, set()), atol=1e-4)
        assert not torch.allclose(scores(original, {other}), scores(permuted, {other}), atol=1e-4)


@pytest.mark.parametrize("backbone", STUDENT_BACKBONES)
def test_any_number_of_modalities_and_shared_modes(tmp_path, backbone):
    """Three modalities: a finite training step that reaches every parameter, masked outputs
    that differ from the joint ones, and the modes a CKD student asks for at once (joint, only m,
    without m) equal to one forward per mode."""
    write_tiny_mmrec(str(tmp_path), dims={"v": 8, "t": 4, "a": 3})
    files = {"v": "image_feat.npy", "t": "text_feat.npy", "a": "a_feat.npy"}
    net, train = build(backbone, str(tmp_path), tmp_path, modalities=files)
    assert net.modalities == ("v", "t", "a")
    net.train()
    loss = net.calculate_loss(next(iter(train)))
    loss.backward()
    assert torch.isfinite(loss)
    assert [n for n, p in net.named_parameters() if p.grad is None] == []
    net.eval()
    joint = scores(net, set())
    for masked in ({"v"}, {"t", "a"}, {"v", "t", "a"}):
        masked_scores = scores(net, masked)
        assert torch.isfinite(masked_scores).all() and not torch.allclose(masked_scores, joint)
    student = MODELS[f"{backbone}_CKD"]
    modes = student.modes(net)
    assert set(modes) == {"joint", "only_v", "only_t", "only_a", "without_v", "without_t", "without_a"}
    users, items = torch.tensor([1, 2, 2, 5]), torch.tensor([3, 1, 7])
    with torch.no_grad():
        shared = net.batch_representations_modes(users, items, modes)
        for name, masked in modes.items():
            user_reps, item_reps = net.forward(masked)
            torch.testing.assert_close(shared[name][0], user_reps[users])
            torch.testing.assert_close(shared[name][1], item_reps[items])


@pytest.mark.parametrize("backbone", STUDENT_BACKBONES)
def test_a_training_forward_gives_what_forward_gives(tiny_dataset, tmp_path, backbone):
    """The student's one forward per step (every mode's margins, the joint batch representations)
    equals one full forward per mode, and the base class's generic computation."""
    from recbole_ckd.model.multimodal import MultimodalRecommender

    student, train = build(f"{backbone}_CKD", tiny_dataset["root"], tmp_path)
    batch = next(iter(train))
    u, i, j = batch["userID"], batch["itemID"], batch["neg_itemID"]
    fast, joint, _ = student.triple_margins(u, i, j, student.modes())
    for name, masked in student.modes().items():
        users, items = student.forward(masked)
        torch.testing.assert_close(fast[name], (users[u] * (items[i] - items[j])).sum(-1), rtol=1e-5, atol=1e-5)
        if name == "joint":
            for got, expected in zip(joint, (users[u], items[i], items[j])):
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    generic = MultimodalRecommender.triple_margins(student, u, i, j, student.modes()).margins
    for name in fast:
        torch.testing.assert_close(fast[name], generic[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_full_sort_predict_is_the_forward_tables(tiny_dataset, tmp_path, name):
    model, train = build(name, tiny_dataset["root"], tmp_path)
    model.eval()
    users = torch.arange(1, model.n_users)
    batch = Interaction({model.USER_ID: users})
    with torch.no_grad():
        user_reps, item_reps = model.forward(model.default_masked)
        predicted = model.full_sort_predict(batch).view(len(users), -1)
    torch.testing.assert_close(predicted, user_reps[users] @ item_reps.T)


# ----------------------------------------------------------------------------- training
@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_MODELS)
def test_training_runs_and_resumes_bit_identically(tiny_dataset, tmp_path, name, epoch_log):
    """Three epochs end to end; the same run interrupted in its last stage's second epoch and
    started again ends with the same selected model and the same test result."""
    settings = {"epochs": 3, "stopping_step": 100, "gd_samples": 9}
    reference = run(name, "tiny", config_dict=fast_config(tiny_dataset["root"], tmp_path / "a", **settings))
    assert load_checkpoint(tmp_path / "a" / reference["checkpoint"])["model"] == name

    epoch_log.interrupt(1, model=name)
    with pytest.raises(KeyboardInterrupt):
        run(name, "tiny", config_dict=fast_config(tiny_dataset["root"], tmp_path / "b", **settings))
    resumed = run(name, "tiny", config_dict=fast_config(tiny_dataset["root"], tmp_path / "b", **settings))
    assert epoch_log.interrupted == [(name, 1)]
    assert resumed["test_result"] == reference["test_result"]
    ours, theirs = (load_checkpoint(tmp_path / d / r["checkpoint"])["state_dict"] for r, d in ((resumed, "b"), (reference, "a")))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_tensor_follows_the_configured_device(tiny_dataset, tmp_path, name):
    model, train = build(name, tiny_dataset["root"], tmp_path, use_gpu=True, device="cuda")
    model = model.to("cuda")
    assert all(t.device.type == "cuda" for t in list(model.parameters()) + list(model.buffers()))
    if name in MODELS and hasattr(MODELS[name], "backbone"):
        attach_random_teachers(model)
    batch = next(iter(train)).to("cuda")
    model.train()
    model.calculate_loss(batch).backward()
