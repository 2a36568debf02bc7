"""Mirror Gradient (``mg``): the step against hand-computed values, the run keys, the refusals."""

import pytest
import torch
from conftest import fast_config
from recbole.trainer import KGTrainer

from recbole_ckd.compat import load_checkpoint
from recbole_ckd.config import Config
from recbole_ckd.errors import ConfigError
from recbole_ckd.quick_start import run
from recbole_ckd.run_keys import config_key, teacher_run_dir
from recbole_ckd.trainer import mirror_gradient, with_safe_checkpoints


def test_steps_equal_hand_computed_values():
    # loss(w) = (w - t)^2, gradient 2 (w - t); SGD with lr 0.1; alpha1 1, alpha2 0.5, beta 2
    weight = torch.nn.Parameter(torch.tensor(1.0))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    loss_func = mirror_gradient(lambda t: (weight - t) ** 2, optimizer, alpha1=1.0, alpha2=0.5, beta=2)
    positions = []
    for target in (3.0, 3.0, 3.0):
        optimizer.zero_grad()
        loss = loss_func(target)
        loss.backward()
        optimizer.step()
        positions.append(weight.item())
    # batch 0, mirrored: w = 1 - 0.1 * 1 * 2 (1 - 3) = 1.4, then w = 1.4 - 0.1 * (-0.5) * 2 (1.4 - 3) = 1.24
    # batch 1, plain: w = 1.24 - 0.1 * 2 (1.24 - 3) = 1.592
    # batch 2, mirrored: w = 1.592 + 0.2816 = 1.8736, then w = 1.8736 - 0.05 * 2 (3 - 1.8736) = 1.76096
    assert positions == pytest.approx([1.24, 1.592, 1.76096])


def test_the_logged_loss_is_the_first_one_with_every_part():
    weight = torch.nn.Parameter(torch.tensor(1.0))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    loss_func = mirror_gradient(lambda t: ((weight - t) ** 2, 0.5 * weight ** 2), optimizer, 1.0, 0.5, 3)
    parts = loss_func(3.0)  # loss and gradient 2 (w - 3) + w = -3 at w = 1: the first step goes to 1.3
    assert [p.item() for p in parts] == pytest.approx([4.0, 0.5])  # the values at w = 1
    sum(parts).backward()
    assert weight.item() == pytest.approx(1.3)
    assert weight.grad.item() == pytest.approx(-0.5 * (2 * (1.3 - 3) + 1.3))  # the second step's gradient


def test_a_trained_model_differs_only_when_on(tiny_dataset, tmp_path):
    settings = fast_config(tiny_dataset["root"], tmp_path / "saved", epochs=2, train_batch_size=32)
    off = run("VBPR", "tiny", config_dict=settings)
    again = run("VBPR", "tiny", config_dict={**settings, "checkpoint_dir": str(tmp_path / "again"), "mg": False})
    on = run("VBPR", "tiny", config_dict={**settings, "mg": True, "alpha2": 0.3})
    assert again["run_key"] == off["run_key"] and again["valid_result"] == off["valid_result"]
    assert on["run_key"] != off["run_key"] and on["checkpoint"] != off["checkpoint"]
    assert on["valid_result"] != off["valid_result"]


def test_an_interrupted_run_with_it_resumes_bit_identically(tiny_dataset, tmp_path, epoch_log):
    """No state of its own: the batches are counted from 0 in every epoch, as in MMRec."""
    settings = fast_config(tiny_dataset["root"], epochs=3, stopping_step=100, train_batch_size=32, mg=True, beta=2)
    reference = run("VBPR", "tiny", config_dict={**settings, "checkpoint_dir": str(tmp_path / "a")})
    epoch_log.interrupt(1)
    with pytest.raises(KeyboardInterrupt):
        run("VBPR", "tiny", config_dict={**settings, "checkpoint_dir": str(tmp_path / "b")})
    resumed = run("VBPR", "tiny", config_dict={**settings, "checkpoint_dir": str(tmp_path / "b")})
    assert epoch_log.interrupted == [(None, 1)] and resumed["test_result"] == reference["test_result"]
    ours, theirs = (load_checkpoint(tmp_path / d / r["checkpoint"])["state_dict"]
                    for r, d in ((resumed, "b"), (reference, "a")))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_run_key_is_unchanged_while_off(tiny_dataset):
    def key(model, **extra):
        config = Config(model, "tiny", config_dict=fast_config(tiny_dataset["root"], **extra))
        return config_key(config), teacher_run_dir(config, "v")

    for model in ("VBPR", "VBPR_CKD", "BPR"):
        plain = key(model)
        assert key(model, mg=False) == plain
        assert key(model, mg=False, alpha1=1.0, alpha2=0.1, beta=3) == plain
        on = key(model, mg=True)
        assert on[0] != plain[0] and on[1] != plain[1]  # teachers train with it too: their cache differs


@pytest.mark.parametrize("extra, words", [
    ({"mg": "yes"}, "mg must be True or False"),
    ({"mg": True, "beta": 0}, "beta: 0 is not allowed with mg: True"),
    ({"mg": True, "beta": 1.5}, "integer >= 1"),
    ({"alpha2": -0.1}, "alpha2 must be a number >= 0"),
])
def test_bad_settings_are_refused(tiny_dataset, extra, words):
    with pytest.raises(ConfigError, match=words):
        Config("VBPR", "tiny", config_dict=fast_config(tiny_dataset["root"], **extra))


def test_a_beta_of_another_model_is_accepted_while_off(tiny_dataset):
    config = Config("VBPR", "tiny", config_dict=fast_config(tiny_dataset["root"], beta=0.2))
    assert config["beta"] == 0.2


def test_recbole_trainers_with_their_own_loop_refuse_it():
    with pytest.raises(ConfigError, match="mg: True is not supported for KGAT: it trains with RecBole's KGTrainer"):
        with_safe_checkpoints(KGTrainer)({"mg": True, "model": "KGAT"}, None)
