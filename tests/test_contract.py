"""The contract every backbone and its CKD student keep, checked for every registered backbone
(a new backbone is covered without writing a test): the student's objective is the backbone's
whole objective plus ``kd_weight`` times the distillation term, nothing removed."""

import pytest
import torch
from conftest import FAST, attach_random_teachers

from recbole_ckd.config import Config
from recbole_ckd.data.dataset import data_preparation
from recbole_ckd.model import BACKBONES, MODELS
from recbole_ckd.registry import create_dataset

STUDENT_BACKBONES = [cls.__name__ for cls in BACKBONES if cls.ranks_with_modalities]


def build_pair(root, tmp_path, backbone, **extra):
    """A plain backbone and its student in the same state (the student loads the backbone's
    parameters), random frozen teacher tables, and one training batch."""
    settings = {**FAST, "data_path": root, "checkpoint_dir": str(tmp_path / "saved"), "gd_samples": 9, **extra}
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


def loss_and_grads(model, batch):
    model.zero_grad()
    torch.manual_seed(5)  # the same draws for any dropout a backbone uses
    loss = model.calculate_loss(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def reference_distillation(student, batch, triples):
    """The distillation term from the full tables of every mode (docs/method.md, section 4, two modalities)."""
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
    c_t = ((d_j - d("only_v", u, i, j)) / d("only_t", u, i, j)).nan_to_num(nan=1e-8).clamp(1e-8, 10)
    c_v = ((d_j - d("only_t", u, i, j)) / d("only_v", u, i, j)).nan_to_num(nan=1e-8).clamp(1e-8, 10)
    weight = {"t": 2 * c_v / (c_t + c_v), "v": 2 * c_t / (c_t + c_v)}
    tau, total = student.kd_temperature, 0.0
    for m in ("v", "t"):
        specific = torch.relu(d(m, u, i, j) - d(f"only_{m}", u, i, j))
        p_t, p_s = torch.sigmoid(d(m, gu, ga, gb) / tau), torch.sigmoid(d(f"only_{m}", gu, ga, gb) / tau)
        generic = -(p_t * torch.log(p_s + 1e-8) + (1 - p_t) * torch.log(1 - p_s + 1e-8)).mean()
        total = total + weight[m] * (specific + student.gd_weight * generic)
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
