"""SLMRec and MVGAE against dense versions of their equations, on a small hand-made dataset."""

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import MASK_IDS, MASKS, build_model, write_hand_made

TRAIN = {0: [0, 1, 2], 1: [0, 1, 3], 2: [1, 2, 4], 3: [5, 6], 4: [6, 7], 5: [3]}


@pytest.fixture
def hand_made(tmp_path):
    return write_hand_made(tmp_path / "data", TRAIN)


def build(name, root, tmp_path, **extra):
    net, train = build_model(name, root, tmp_path / "saved", seed=2, **extra)
    return net.eval(), train


def adjacency(train):
    """Dense ``[[0, R], [R^T, 0]]`` of the training interactions (users first)."""
    R = torch.from_numpy((train.dataset.inter_matrix(form="coo").toarray() > 0).astype(np.float32))
    n_users, n_items = R.shape
    A = torch.zeros(n_users + n_items, n_users + n_items)
    A[:n_users, n_users:], A[n_users:, :n_users] = R, R.T
    return A, n_users


def symmetric(A):
    degree = A.sum(1)
    scale = torch.where(degree > 0, degree.pow(-0.5), torch.zeros_like(degree))
    return scale[:, None] * A * scale[None, :]


def linear(layer, x):
    return x @ layer.weight.T + layer.bias


# ----------------------------------------------------------------------------- SLMRec
def slmrec_branches(net, A_hat, n_users, masked):
    """``{branch: mean_l A_hat^l [e_U; input]}`` with input ``e_I`` or ``W_m normalize(f^m)``."""
    inputs = {"id": net.item_embedding.weight}
    for m in net.modalities:
        features = F.normalize(net.feature(m), dim=1)
        if m in masked:
            features = features[1:].mean(0, keepdim=True).expand(len(features), -1)
        inputs[m] = linear(net.dense[m], features)
    result = {}
    for name, items in inputs.items():
        layer = torch.cat([net.user_embedding.weight, items])
        total = layer
        for _ in range(net.n_layers):
            layer = A_hat @ layer
            total = total + layer
        result[name] = (total / (net.n_layers + 1)).split([n_users, len(items)])
    return result


def slmrec_reference(net, train, masked):
    A, n_users = adjacency(train)
    branches = slmrec_branches(net, symmetric(A), n_users, masked)
    order = ["id"] + list(net.modalities)
    users = linear(net.user_fusion, torch.cat([branches[b][0] for b in order], dim=1))
    items = linear(net.item_fusion, torch.cat([branches[b][1] for b in order], dim=1))
    return users, items, branches


@pytest.mark.parametrize("masked", MASKS, ids=MASK_IDS)
def test_slmrec_forward_is_the_dense_formula(hand_made, tmp_path, masked):
    net, train = build("SLMRec", hand_made, tmp_path, n_layers=2)
    with torch.no_grad():
        users, items = net.forward(frozenset(masked))
        expected_users, expected_items, _ = slmrec_reference(net, train, masked)
    torch.testing.assert_close(users, expected_users, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items, expected_items, rtol=1e-5, atol=1e-6)


def nce(a, b, temperature):
    """``-mean_b log softmax_k(<a_b, b_k> / temperature)[b]``, written out."""
    logits = a @ b.T / temperature
    return (logits.logsumexp(dim=1) - logits.diag()).mean()


def test_slmrec_loss_is_infonce_plus_the_fine_and_coarse_terms(hand_made, tmp_path):
    net, train = build("SLMRec", hand_made, tmp_path, ssl_alpha=0.3, ssl_temp=0.5, temp=0.2)
    net.train()
    batch = next(iter(train))
    u, i = batch["userID"], batch["itemID"]
    loss = net.calculate_loss(batch)
    with torch.no_grad():
        users, items, branches = slmrec_reference(net, train, set())
        main = nce(F.normalize(users[u], dim=1), F.normalize(items[i], dim=1), 0.2)
        # FAC: the image level of the ID space at full size, the text level (last) at half size
        s_v = linear(net.fac_step["v"], branches["id"][1][i])
        s_t = linear(net.fac_step["t"], s_v)
        assert s_v.shape[1] == net.dim and s_t.shape[1] == net.dim // 2
        fac_v = nce(s_v, linear(net.fac_head["v"], branches["v"][1][i]), 0.5)
        fac_t = nce(s_t, linear(net.fac_head["t"], branches["t"][1][i]), 0.5)
    torch.testing.assert_close(loss.detach(), main + 0.3 * (fac_v + fac_t), rtol=1e-5, atol=1e-6)
    assert set(net.last_loss_terms) == {"infonce", "fac_v", "fac_t", "l2", "loss"}


# ----------------------------------------------------------------------------- MVGAE
def encoder_reference(encoder, A_mean, features):
    """The dense encoder: ``x = normalize([P; MLP f])``, ``conv(x) = normalize(A_mean x W + b)``."""

    def conv(layer, x):
        return F.leaky_relu(F.normalize(A_mean @ x @ layer.weight.T + layer.bias, dim=1))

    x = F.normalize(torch.cat([encoder.preference, linear(encoder.mlp, features)]), dim=1)
    for layer, gate in zip(encoder.conv, encoder.gate):
        x = F.leaky_relu(linear(gate, conv(layer, x)))
    mu = linear(encoder.gate_mu, conv(encoder.conv_mu, x)) + F.leaky_relu(linear(encoder.self_mu, x))
    logvar = linear(encoder.gate_logvar, conv(encoder.conv_logvar, x)) + F.leaky_relu(linear(encoder.self_logvar, x))
    return mu, logvar


def poe_reference(experts):
    """Product of Gaussian experts with ``1e-8`` added to each variance."""
    precision = [1 / (logvar.exp() + 1e-8) for _, logvar in experts]
    mu = sum(p * mu for p, (mu, _) in zip(precision, experts)) / sum(precision)
    return mu, torch.log(1 / sum(precision))


def mvgae_reference(net, train, masked):
    A, n_users = adjacency(train)
    A = A + torch.eye(len(A))
    A_mean = A / A.sum(1, keepdim=True)
    experts = {m: encoder_reference(net.encoders[m], A_mean, net.feature(m)) for m in net.modalities}
    experts["c"] = encoder_reference(net.collaborative, A_mean, net.collaborative_items)
    active = [experts[m] for m in net.modalities if m not in masked]
    fused = poe_reference([poe_reference(active), experts["c"]] if active else [experts["c"]])
    return fused, experts, n_users


@pytest.mark.parametrize("masked", MASKS, ids=MASK_IDS)
def test_mvgae_forward_is_the_product_of_the_unmasked_experts(hand_made, tmp_path, masked):
    net, train = build("MVGAE", hand_made, tmp_path, n_layers=2)
    with torch.no_grad():
        users, items = net.forward(frozenset(masked))
        (mu, _), _, n_users = mvgae_reference(net, train, masked)
    torch.testing.assert_close(users, torch.sigmoid(mu[:n_users]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items, torch.sigmoid(mu[n_users:]), rtol=1e-5, atol=1e-6)


SMALL = {"embedding_size": 3, "latent_dim": 4}


def step_generator(seed, step):
    digest = hashlib.blake2b(f"MVGAE/{seed}/{step}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


@pytest.mark.parametrize("active", [None, ["v"]], ids=["joint", "teacher-v"])
def test_mvgae_loss_is_reconstruction_plus_kl_of_every_posterior(hand_made, tmp_path, active):
    # a small size: with 64 dimensions the reconstruction's scores saturate (see the docstring)
    net, train = build("MVGAE", hand_made, tmp_path, beta=0.3, active_modalities=active, **SMALL)
    net.train()
    batch = next(iter(train))
    u, i, j = batch["userID"], batch["itemID"], batch["neg_itemID"]
    net.training_steps = 4
    loss = net.calculate_loss(batch)
    assert net.training_steps == 5
    with torch.no_grad():
        fused, experts, n_users = mvgae_reference(net, train, net.default_masked)
        posteriors = [fused] + [experts[m] for m in net.modalities if m not in net.default_masked] + [experts["c"]]
        generator, expected = step_generator(train.config["seed"], 4), 0.0
        real = torch.ones(len(fused[0]), dtype=torch.bool)
        real[[0, n_users]] = False
        for mu, logvar in posteriors:
            std = torch.exp(0.5 * logvar.clamp(max=10))
            s = torch.sigmoid(mu + 0.1 * torch.randn(mu.shape, generator=generator) * std)
            s_u, s_i, s_j = s[u], s[n_users + i], s[n_users + j]  # items after the users
            positive = torch.sigmoid((s_u * s_i).sum(1))
            negative = torch.sigmoid((s_u[:, None, :] * s_j[None, :, :]).sum(2).max(1).values)  # hardest in the batch
            recon = -torch.log2(torch.sigmoid(positive - negative)).sum()
            clamped = logvar.clamp(max=10)
            kl = (-0.5 * (1 + clamped - mu**2 - clamped.exp()).sum(1))[real].mean()
            expected = expected + recon + 0.3 * kl
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)


def test_mvgae_noise_follows_the_step_count_saved_in_the_state(hand_made, tmp_path):
    net, train = build("MVGAE", hand_made, tmp_path, **SMALL)
    net.train()
    batch = next(iter(train))
    first, second = net.calculate_loss(batch).detach(), net.calculate_loss(batch).detach()
    assert not torch.equal(first, second)  # a new draw every step
    state = net.state_dict()
    assert int(state["_extra_state"]) == 2
    other, _ = build("MVGAE", hand_made, tmp_path / "other", **SMALL)
    other.load_state_dict(state)
    other.train()
    torch.manual_seed(123)  # the global generator plays no part
    third = net.calculate_loss(batch).detach()
    torch.testing.assert_close(other.calculate_loss(batch).detach(), third, rtol=0, atol=0)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net.forward()[0], net.forward()[0], rtol=0, atol=0)  # the posterior mean


@pytest.mark.parametrize("name, key, value", [("SLMRec", "n_layers", -1), ("SLMRec", "ssl_temp", 0),
                                              ("MVGAE", "n_layers", 0), ("MVGAE", "beta", -1)])
def test_out_of_range_settings_are_refused_by_name(hand_made, tmp_path, name, key, value):
    with pytest.raises(ValueError, match=key):
        build(name, hand_made, tmp_path, **{key: value})
