"""CKD: the loss pieces against hand-computed values, the student, the teacher cache, resume."""

import glob
import math
import os
import threading

import pytest
import torch
from conftest import build_model, fast_ckd_config, fast_config, write_tiny_mmrec

from recbole_ckd.compat import load_checkpoint
from recbole_ckd.config import Config
from recbole_ckd.data.dataset import data_preparation
from recbole_ckd.model.ckd import (
    counterfactual_effect,
    generic_distillation,
    margins,
    modality_weights,
    specific_distillation,
)
from recbole_ckd.quick_start import run
from recbole_ckd.registry import create_dataset
from recbole_ckd.trainer import NonFiniteLossError, ResumableTrainer

T = torch.tensor


# ----------------------------------------------------------------------------- loss pieces
def test_margin():
    users, pos, neg = T([[1.0, 2.0]]), T([[3.0, 0.0]]), T([[0.0, 1.0]])
    assert margins(users, pos, neg).tolist() == [3.0 - 2.0]


def test_specific_hinge_is_one_sided():
    teacher, student = T([1.0, 0.5, -1.0, 2.0]), T([0.5, 1.0, -2.0, 2.0])
    assert specific_distillation(teacher, student).tolist() == [0.5, 0.0, 1.0, 0.0]


def test_generic_bce_with_temperature():
    def bce(teacher, student, tau):
        p_t, p_s = 1 / (1 + math.exp(-teacher / tau)), 1 / (1 + math.exp(-student / tau))
        return -(p_t * math.log(p_s + 1e-8) + (1 - p_t) * math.log(1 - p_s + 1e-8))

    # teacher and student margins both away from 0, so the teacher, the student and tau all matter
    assert generic_distillation(T([0.3]), T([-0.1]), 0.1).item() == pytest.approx(bce(0.3, -0.1, 0.1), rel=1e-6)
    assert bce(0.3, -0.1, 0.1) != pytest.approx(bce(-0.3, -0.1, 0.1))  # the teacher matters
    assert bce(0.3, -0.1, 0.1) != pytest.approx(bce(0.3, 0.2, 0.1))  # the student matters
    # a larger temperature softens both probabilities towards 0.5: here, a smaller loss
    assert generic_distillation(T([0.3]), T([-0.1]), 1.0).item() == pytest.approx(bce(0.3, -0.1, 1.0), rel=1e-6)
    assert bce(0.3, -0.1, 1.0) < bce(0.3, -0.1, 0.1)
    # a scalar: the mean over the G triples
    both = generic_distillation(T([0.3, 0.0]), T([-0.1, 0.2]), 0.1).item()
    assert both == pytest.approx((bce(0.3, -0.1, 0.1) + bce(0.0, 0.2, 0.1)) / 2, rel=1e-6)


@pytest.mark.parametrize(
    "numerator, denominator, expected",
    [
        (2.0, 1.0, 2.0),
        (-1.0, 1.0, 1e-8),  # non-positive numerator: floor
        (0.0, 1.0, 1e-8),
        (1.0, -1.0, 1e-8),  # non-positive denominator: floor
        (-2.0, -1.0, 2.0),  # both negative: a positive ratio
        (100.0, 1.0, 10.0),  # ceiling
        (1.0, 0.0, 10.0),  # division by zero: +inf, clamped
        (0.0, 0.0, 1e-8),  # 0/0: no effect
    ],
)
def test_counterfactual_effect_clamping(numerator, denominator, expected):
    joint, without, only = T([numerator + 5.0]), T([5.0]), T([denominator])
    assert counterfactual_effect(joint, without, only).item() == pytest.approx(expected, rel=1e-5)


def test_weights_for_two_modalities_are_the_reference_formula():
    c_t, c_v = T([2.0, 1e-8, 3.0, 10.0]), T([1.0, 1e-8, 3.0, 1e-8])
    r = modality_weights(torch.stack([c_t, c_v]))
    torch.testing.assert_close(r[0], 2 * c_v / (c_t + c_v))
    torch.testing.assert_close(r[1], 2 - r[0])
    assert r[:, 1].tolist() == [1.0, 1.0]  # both at the floor: equal weights
    assert r[0, 0].item() == pytest.approx(2 / 3)  # the larger effect gets the smaller weight


def test_weights_for_three_modalities_sum_to_three():
    r = modality_weights(T([[1.0], [2.0], [4.0]]))
    assert r[:, 0].tolist() == pytest.approx([3 / 1.75, 1.5 / 1.75, 0.75 / 1.75])
    assert r.sum().item() == pytest.approx(3.0)


# ----------------------------------------------------------------------------- the student
def build_student(root, model="VBPR_CKD", **extra):
    student, train = build_model(model, root, gd_samples=7, **extra)
    torch.manual_seed(1)
    teachers = {m: (torch.randn(student.n_users, 5), torch.randn(student.n_items, 5)) for m in student.modalities}
    student.set_teacher_tables(teachers)
    return train.config, train, student, teachers


def test_student_loss_is_the_spec_formula(tiny_dataset):
    config, train, student, teachers = build_student(tiny_dataset["root"])
    batch = next(iter(train))
    triples = student.generic_triples()
    student.generic_triples = lambda: triples
    loss = student.calculate_loss(batch)

    u, i, j = batch["userID"], batch["itemID"], batch["neg_itemID"]
    gu, ga, gb = triples
    tables = {name: student.forward(masked) for name, masked in student.modes().items()}

    def d(name, users, a, b):
        U, I = tables[name] if name in tables else teachers[name]
        return ((U[users] * I[a]).sum(1) - (U[users] * I[b]).sum(1))

    U, I = tables["joint"]
    d_j = d("joint", u, i, j)
    expected = -torch.log(torch.sigmoid(d_j)).mean()
    expected += config["reg_weight"] * 0.5 * (U[u].pow(2).sum() + I[i].pow(2).sum() + I[j].pow(2).sum()) / len(u)
    c = {
        "v": ((d_j - d("only_t", u, i, j)) / d("only_v", u, i, j)).clamp(1e-8, 10),
        "t": ((d_j - d("only_v", u, i, j)) / d("only_t", u, i, j)).clamp(1e-8, 10),
    }
    r_t = 2 * c["v"] / (c["t"] + c["v"])
    r = {"t": r_t, "v": 2 - r_t}
    tau, total = config["kd_temperature"], 0
    for m in ("v", "t"):
        sd = torch.relu(d(m, u, i, j) - d(f"only_{m}", u, i, j))
        p_t, p_s = torch.sigmoid(d(m, gu, ga, gb) / tau), torch.sigmoid(d(f"only_{m}", gu, ga, gb) / tau)
        gd = -(p_t * torch.log(p_s + 1e-8) + (1 - p_t) * torch.log(1 - p_s + 1e-8)).mean()
        total = total + r[m] * (sd + config["gd_weight"] * gd)
    expected = expected + config["kd_weight"] * total.mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_counterfactual_weights_are_detached_and_teachers_get_no_gradient(tiny_dataset, monkeypatch):
    import recbole_ckd.model.ckd as ckd

    config, train, student, teachers = build_student(tiny_dataset["root"])
    batch = next(iter(train))
    triples = student.generic_triples()
    student.generic_triples = lambda: triples
    student.calculate_loss(batch).backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters()}
    assert all(not u.requires_grad and not i.requires_grad for u, i in student.teacher_tables.values())

    # the effects reach the weights without a graph, so treating the weights as constants
    # gives exactly the same gradient
    real = ckd.modality_weights

    def constant_weights(effects):
        assert not effects.requires_grad
        return real(effects).detach().clone()

    monkeypatch.setattr(ckd, "modality_weights", constant_weights)
    student.zero_grad()
    student.calculate_loss(batch).backward()
    for n, p in student.named_parameters():
        torch.testing.assert_close(p.grad, grads[n])


def test_teachers_are_frozen_during_stage_two(tiny_dataset, tmp_path, monkeypatch):
    from recbole_ckd.trainer import CKDTrainer

    seen = {}
    real_fit = ResumableTrainer.fit

    def spy(self, *args, **kwargs):
        if isinstance(self, CKDTrainer):
            seen["teachers"] = [t.model for t in self.teacher_trainers.values()]
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(ResumableTrainer, "fit", spy)
    run("VBPR_CKD", "tiny", config_dict=ckd_config(tiny_dataset, tmp_path, epochs=2))
    for teacher in seen["teachers"]:
        assert not teacher.training
        assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())


def test_epoch_statistics_report_the_weights(tiny_dataset):
    config, train, student, _ = build_student(tiny_dataset["root"])
    for batch in train:
        student.calculate_loss(batch)
    stats = student.pop_epoch_stats()
    assert set(stats) == {"bpr", "l2", "distill", "specific", "generic", "loss", "r_v_mean", "r_v_std", "r_t_mean", "r_t_std"}
    assert stats["r_v_mean"] + stats["r_t_mean"] == pytest.approx(2.0, rel=1e-5)
    assert stats["r_v_std"] == pytest.approx(stats["r_t_std"], rel=1e-4)  # r_t = 2 - r_v
    assert student.pop_epoch_stats() == {}


def test_more_than_two_modalities(tmp_path):
    write_tiny_mmrec(str(tmp_path), dims={"v": 8, "t": 4, "a": 3})
    config, train, student, teachers = build_student(
        str(tmp_path), modalities={"v": "image_feat.npy", "t": "text_feat.npy", "a": "a_feat.npy"}
    )
    assert set(student.modes()) == {"joint", "only_v", "only_t", "only_a", "without_v", "without_t", "without_a"}
    loss = student.calculate_loss(next(iter(train)))
    assert torch.isfinite(loss)
    stats = student.pop_epoch_stats()
    assert stats["r_v_mean"] + stats["r_t_mean"] + stats["r_a_mean"] == pytest.approx(3.0, rel=1e-5)


# ----------------------------------------------------------------------------- end to end
def ckd_config(tiny_dataset, tmp_path, **extra):
    return fast_ckd_config(tiny_dataset["root"], tmp_path / "saved", **extra)


@pytest.mark.parametrize("model", ["VBPR_CKD", "MMGCN_CKD"])
def test_ckd_end_to_end(tiny_dataset, tmp_path, model):
    result = run(model, "tiny", config_dict=ckd_config(tiny_dataset, tmp_path))
    assert set(result["modes"]) == {"student joint", "student only_v", "student only_t", "teacher v", "teacher t"}
    assert result["modes"]["student joint"]["test"] == pytest.approx(result["test_result"])
    # the teachers were selected in their "only m" mode: re-evaluating them there gives the
    # validation score their training selected on
    for m in ("v", "t"):
        assert result["checkpoints"][f"teacher {m}"].startswith(f"tiny/teachers/{model.removesuffix('_CKD')}-{m}-")
        state = load_checkpoint(tmp_path / "saved" / result["checkpoints"][f"teacher {m}"] / "last.pth")
        assert result["modes"][f"teacher {m}"]["valid"]["recall@20"] == pytest.approx(state["best_valid_score"], abs=1e-4)


def teacher_files(tmp_path):
    return sorted(glob.glob(str(tmp_path / "saved" / "tiny" / "teachers" / "*" / "best.pth")))


def saved(tmp_path, relative):
    """A path the result records relative to ``checkpoint_dir``, made absolute."""
    return str(tmp_path / "saved" / relative)


def teacher_dirs_written(writes, tmp_path):
    """The teacher folders that got a checkpoint written, among ``writes``."""
    teachers = str(tmp_path / "saved" / "tiny" / "teachers")
    return {os.path.dirname(f) for f in writes if f.startswith(teachers + os.sep)}


BOTH_CACHED, BOTH_TRAINED = {"v": "cached", "t": "cached"}, {"v": "trained", "t": "trained"}


def test_teacher_cache_reuse_invalidation_and_corruption(tiny_dataset, tmp_path, caplog, epoch_log, checkpoint_writes):
    first = run("VBPR_CKD", "tiny", config_dict=ckd_config(tiny_dataset, tmp_path, epochs=2))
    assert first["teachers"] == BOTH_TRAINED and len(teacher_files(tmp_path)) == 2
    assert epoch_log.of("VBPR", ("v",)) == epoch_log.of("VBPR", ("t",)) == [0, 1]

    # a student-only change reuses both teachers: not one teacher epoch, not one teacher file written
    epoch_log.clear()
    checkpoint_writes.clear()
    again = run("VBPR_CKD", "tiny", config_dict=ckd_config(tiny_dataset, tmp_path, epochs=2, kd_weight=0.5,
                                                              kd_temperature=1.0))
    assert again["teachers"] == BOTH_CACHED and {e.model for e in epoch_log} == {"VBPR_CKD"}
    assert {os.path.dirname(f) for f in checkpoint_writes} == {saved(tmp_path, again["checkpoints"]["student"])}
    assert {again["checkpoints"][f"teacher {m}"] for m in "vt"} == {first["checkpoints"][f"teacher {m}"] for m in "vt"}

    # a backbone change trains new teachers
    settings = ckd_config(tiny_dataset, tmp_path, epochs=2, modality_embedding_size=8)
    changed = run("VBPR_CKD", "tiny", config_dict=settings)
    assert changed["teachers"] == BOTH_TRAINED and len(teacher_files(tmp_path)) == 4

    # changed modality features: new teachers
    torch_free = os.path.join(tiny_dataset["path"], "text_feat.npy")
    import numpy as np

    np.save(torch_free, np.load(torch_free) * 2)
    latest = run("VBPR_CKD", "tiny", config_dict=ckd_config(tiny_dataset, tmp_path, epochs=2))
    assert latest["teachers"] == BOTH_TRAINED and len(teacher_files(tmp_path)) == 6

    # a corrupted teacher is retrained, with a warning, and only that one
    corrupted = os.path.join(saved(tmp_path, latest["checkpoints"]["teacher t"]), "best.pth")
    with open(corrupted, "r+b") as f:
        f.truncate(100)
    caplog.clear()
    epoch_log.clear()
    checkpoint_writes.clear()
    run("VBPR_CKD", "tiny", config_dict=ckd_config(tiny_dataset, tmp_path, epochs=2, state="INFO"))
    assert "unusable checkpoint" in caplog.text and "training this stage again" in caplog.text
    assert epoch_log.of("VBPR", ("t",)) == [0, 1] and epoch_log.of("VBPR", ("v",)) == []
    assert teacher_dirs_written(checkpoint_writes, tmp_path) == {saved(tmp_path, latest["checkpoints"]["teacher t"])}
    assert os.path.getsize(corrupted) > 100

    # retrain_teachers forces new ones
    checkpoint_writes.clear()
    forced = run("VBPR_CKD", "tiny", config_dict=ckd_config(tiny_dataset, tmp_path, epochs=2, retrain_teachers=True))
    assert forced["teachers"] == BOTH_TRAINED
    assert teacher_dirs_written(checkpoint_writes, tmp_path) == {saved(tmp_path, latest["checkpoints"][f"teacher {m}"]) for m in "vt"}


@pytest.mark.parametrize("stop_in", ["VBPR", "VBPR_CKD"])
def test_resume_after_interruption_gives_the_same_result(tiny_dataset, tmp_path, epoch_log, stop_in):
    reference = run("VBPR_CKD", "tiny", config_dict=ckd_config(tiny_dataset, tmp_path / "a", epochs=4))

    epoch_log.interrupt(2, model=stop_in)
    with pytest.raises(KeyboardInterrupt):
        run("VBPR_CKD", "tiny", config_dict=ckd_config(tiny_dataset, tmp_path / "b", epochs=4))
    resumed = run("VBPR_CKD", "tiny", config_dict=ckd_config(tiny_dataset, tmp_path / "b", epochs=4, state="INFO"))
    assert epoch_log.interrupted == [(stop_in, 2)]
    assert resumed["test_result"] == reference["test_result"] and resumed["modes"] == reference["modes"]
    # metrics are rounded; the selected students themselves must be identical
    ours, theirs = (load_checkpoint(tmp_path / d / "saved" / r["checkpoint"])["state_dict"]
                    for r, d in ((resumed, "b"), (reference, "a")))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_non_finite_loss_stops_with_epoch_term_and_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    from recbole_ckd.model import ckd

    real = ckd.specific_distillation
    monkeypatch.setattr(ckd, "specific_distillation", lambda t, s: real(t, s) * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"epoch 0 \(bad term: distill, loss, specific\). Last good checkpoint"):
        run("VBPR_CKD", "tiny", config_dict=ckd_config(tiny_dataset, tmp_path))


def test_vbpr_projects_a_batch_the_same_whether_it_gathers_rows_or_projects_every_item(tiny_dataset, monkeypatch):
    from recbole_ckd.model import multimodal

    _, train, student, _ = build_student(tiny_dataset["root"], "VBPR_CKD")
    batch = next(iter(train))
    results = []
    for fraction in (0.0, 1.0):  # every batch projects all items / every batch gathers its rows first
        monkeypatch.setattr(multimodal, "PROJECT_ALL_FRACTION", fraction)
        student.zero_grad()
        margins, joint, _ = student.triple_margins(batch["userID"], batch["itemID"], batch["neg_itemID"], student.modes())
        sum(m.sum() for m in margins.values()).backward()
        results.append((margins, joint, [p.grad.clone() for p in student.projection.parameters()]))
    (margins_a, joint_a, grads_a), (margins_b, joint_b, grads_b) = results
    for name in margins_a:
        torch.testing.assert_close(margins_a[name], margins_b[name])
    for a, b in zip(list(joint_a) + grads_a, list(joint_b) + grads_b):
        torch.testing.assert_close(a, b)


def test_a_student_whose_scores_ignore_a_modality_is_refused(tiny_dataset):
    from recbole_ckd.model import VBPR
    from recbole_ckd.model.ckd import make_ckd_model

    class IDOnly(VBPR):  # ranks with ID embeddings alone, but does not say so
        def forward(self, masked=frozenset()):
            return self.user_id_embedding.weight, self.item_id_embedding.weight

    student_class = make_ckd_model(IDOnly)
    config = Config(student_class, "tiny", config_dict=fast_config(tiny_dataset["root"], embedding_size=8,
                                                                   modality_embedding_size=4))
    train, _, _ = data_preparation(config, create_dataset(config))
    with pytest.raises(ValueError, match="IDOnly cannot be a CKD student: masking modality 'v' does not change"):
        student_class(config, train.dataset)


def test_report_includes_the_plain_backbone_when_it_was_run(tiny_dataset, tmp_path):
    settings = ckd_config(tiny_dataset, tmp_path, epochs=2)
    without = run("VBPR_CKD", "tiny", config_dict=settings)
    assert not any(name.startswith("backbone") for name in without["modes"])
    plain = run("VBPR", "tiny", config_dict=settings)
    report = run("VBPR_CKD", "tiny", config_dict=settings)
    assert report["modes"]["backbone joint"]["test"] == plain["test_result"]
    assert {"backbone only_v", "backbone only_t"} <= set(report["modes"])
    assert report["checkpoints"]["backbone"] == os.path.dirname(plain["checkpoint"])


def test_ckd_needs_two_modalities(tiny_dataset):
    with pytest.raises(ValueError, match="needs at least two modalities"):
        build_student(tiny_dataset["root"], modalities={"t": "text_feat.npy"})


def test_resume_false_does_not_retrain_cached_teachers(tiny_dataset, tmp_path, epoch_log, checkpoint_writes):
    run("VBPR_CKD", "tiny", config_dict=ckd_config(tiny_dataset, tmp_path, epochs=2))
    epoch_log.clear()
    checkpoint_writes.clear()
    again = run("VBPR_CKD", "tiny", config_dict=ckd_config(tiny_dataset, tmp_path, epochs=2, resume=False))
    assert again["teachers"] == BOTH_CACHED and epoch_log.of("VBPR_CKD") == [0, 1]  # the student alone trained again
    assert {e.model for e in epoch_log} == {"VBPR_CKD"}
    assert {os.path.dirname(f) for f in checkpoint_writes} == {saved(tmp_path, again["checkpoints"]["student"])}


def test_no_tensorboard_writer_outlives_a_run(tiny_dataset, tmp_path):
    """Every stage's TensorBoard writer is closed when the stage ends, trained or read from its checkpoints:
    a writer thread left running would write into its relative folder after the caller moved elsewhere."""
    def writer_threads():
        return [t for t in threading.enumerate() if type(t).__name__ == "_AsyncWriterThread" and t.is_alive()]

    before = writer_threads()
    run("VBPR_CKD", "tiny", config_dict=ckd_config(tiny_dataset, tmp_path, epochs=2))
    assert writer_threads() == before
    run("VBPR_CKD", "tiny", config_dict=ckd_config(tiny_dataset, tmp_path, epochs=2))  # every stage finished: read back
    assert writer_threads() == before


# ----------------------------------------------------------------------------- learning-rate schedule
def test_learning_rate_schedule_values_per_epoch_and_after_resume(tiny_dataset, tmp_path, epoch_log):
    epoch_log.interrupt(2)
    settings = fast_config(tiny_dataset["root"], tmp_path / "saved", epochs=4, stopping_step=100, learning_rate=0.01,
                           learning_rate_scheduler=[0.5, 2])
    with pytest.raises(KeyboardInterrupt):
        run("VBPR", "tiny", config_dict=settings)
    run("VBPR", "tiny", config_dict=settings)  # resumes at epoch 2
    # MMRec's schedule: lr * 0.5^(epoch / 2); epoch 2 is trained twice (interrupted, then resumed)
    assert [e.index for e in epoch_log] == [0, 1, 2, 2, 3]
    for epoch in epoch_log:
        assert epoch.lr == pytest.approx(0.01 * 0.5 ** (epoch.index / 2))


@pytest.mark.parametrize("value", [[0.96], [0.0, 50], [0.96, -1], "fast"])
def test_bad_learning_rate_schedule_is_refused(tiny_dataset, tmp_path, value):
    with pytest.raises(ValueError, match="learning_rate_scheduler must be"):
        run("VBPR", "tiny", config_dict=fast_config(tiny_dataset["root"], tmp_path / "saved",
                                                    learning_rate_scheduler=value))
