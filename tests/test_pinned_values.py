"""Speed work must not change what is computed: the loss terms and the gradients of one training
step of every backbone, every CKD student and every MMPareto variant (its own gradient rule), on the tiny dataset, equal the values recorded in
``tests/pinned_values.json`` before the speed optimisations of the trainers and models.

Each gradient is pinned by three checksums (its sum, its absolute sum and its dot product with a
fixed pseudo-random tensor), which any change of a single entry moves. The recorded file is
written by ``python tests/test_pinned_values.py --record`` (only ever on purpose: it is the
"before" of a speed change).
"""

import json
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from conftest import attach_random_teachers, build_model, write_tiny_mmrec  # noqa: E402

from recbole_ckd.model import BACKBONES  # noqa: E402

PINNED = os.path.join(HERE, "pinned_values.json")
STUDENTS = [cls.__name__ + "_CKD" for cls in BACKBONES if cls.ranks_with_modalities and cls.trains]
PARETO = [cls.__name__ + "_MMPareto" for cls in BACKBONES if cls.ranks_with_modalities and cls.trains]
MODELS = [cls.__name__ for cls in BACKBONES] + STUDENTS + PARETO


def checksums(tensor):
    weights = torch.rand(tensor.shape, generator=torch.Generator().manual_seed(tensor.numel()), dtype=torch.float64)
    tensor = tensor.double()
    return [tensor.sum().item(), tensor.abs().sum().item(), (tensor * weights).sum().item()]


def one_step(name, root, checkpoint_dir):
    """``({term: value}, {parameter: checksums})`` of one training step of ``name`` (two steps'
    worth of state: a ``pre_epoch`` first, every random draw seeded)."""
    model, train = build_model(name, root, checkpoint_dir, gd_samples=9, kd_weight=0.5)
    if name.endswith("_CKD"):
        attach_random_teachers(model)
    model.train()
    torch.manual_seed(3)
    if hasattr(model, "pre_epoch"):
        model.pre_epoch(0)
    batch = next(iter(train))
    torch.manual_seed(5)
    model.zero_grad()
    loss = model.calculate_loss(batch)
    loss.backward()
    terms = {k: float(v) for k, v in model.last_loss_terms.items()}
    grads = {n: checksums(p.grad) for n, p in model.named_parameters() if p.grad is not None}
    return terms, grads


def assert_same_gradient(got, expected, rel, name):
    """Checksums equal up to ``rel`` of the gradient's absolute sum (a sum near zero is rounding),
    or within 1e-8 (a gradient that is zero but for rounding: the bias of a projection whose
    output only enters differences of items, say)."""
    assert got == pytest.approx(expected, rel=0, abs=max(rel * abs(expected[1]), 1e-8)), name


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pinned")
    write_tiny_mmrec(str(root))
    return str(root)


@pytest.mark.parametrize("name", MODELS)
def test_loss_terms_and_gradients_are_the_recorded_ones(tiny_root, tmp_path, name):
    with open(PINNED) as f:
        recorded = json.load(f)[name]
    terms, grads = one_step(name, tiny_root, tmp_path / "saved")
    assert terms.keys() == recorded["terms"].keys()
    for term, value in recorded["terms"].items():
        assert terms[term] == pytest.approx(value, rel=1e-5, abs=1e-7), term
    assert grads.keys() == recorded["grads"].keys()
    for parameter, values in recorded["grads"].items():
        assert_same_gradient(grads[parameter], values, 1e-5, parameter)


@pytest.mark.parametrize("name", ["BM3", "FREEDOM", "FREEDOM_CKD"])  # VBPR: tests/test_ckd.py
def test_projecting_a_batch_gives_the_same_step_whether_it_gathers_rows_or_projects_every_item(
        tiny_root, tmp_path, monkeypatch, name):
    from recbole_ckd.model import multimodal

    steps = []
    for fraction in (0.0, 1.0):  # every batch projects all items / every batch gathers its distinct rows
        monkeypatch.setattr(multimodal, "PROJECT_ALL_FRACTION", fraction)
        steps.append(one_step(name, tiny_root, tmp_path / "saved"))
    (terms_a, grads_a), (terms_b, grads_b) = steps
    assert terms_a == pytest.approx(terms_b, rel=1e-6, abs=1e-8)
    assert grads_a.keys() == grads_b.keys()
    for parameter in grads_a:
        assert_same_gradient(grads_a[parameter], grads_b[parameter], 1e-6, parameter)


@pytest.mark.parametrize("optimizer", ["Adam", "AdamW"])
def test_the_multi_tensor_update_is_the_per_parameter_loop_bit_for_bit(optimizer):
    """The trainers' optimizer (``multi_tensor_update``) updates exactly as PyTorch's CPU default."""
    from recbole_ckd.trainer import multi_tensor_update

    def train(fast):
        generator = torch.Generator().manual_seed(0)
        parameters = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in ((31, 12), (64,), (7, 5))]
        update = getattr(torch.optim, optimizer)(parameters, lr=1e-2, weight_decay=1e-3)
        if fast:
            multi_tensor_update(update)
            assert all(group["foreach"] for group in update.param_groups)
        for step in range(4):
            for p in parameters:
                p.grad = torch.randn(p.shape, generator=generator) * 10.0**-step
            update.step()
        return parameters

    for slow, fast in zip(train(False), train(True)):
        assert torch.equal(slow, fast)


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        write_tiny_mmrec(folder)
        record = {}
        for name in MODELS:
            terms, grads = one_step(name, folder, os.path.join(folder, "saved"))
            record[name] = {"terms": terms, "grads": grads}
            print(name, terms["loss"])
    with open(PINNED, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
