"""SMORE against a dense version of its equations: kNN and max-pooled graphs, the spectral
filters as explicit DFT sums, masking before the filters."""

import math

import pytest
import torch
from conftest import build_eval_model

from recbole_ckd.model import graphs
from recbole_ckd.model.backbones.smore import max_pool_graphs


def dense_knn(features, k):
    """Top-k cosine neighbours (self included; row 0 padding has none and is no one's), cosine
    weights, ``D^-1/2 S D^-1/2``; and which entries are edges."""
    normed = torch.nn.functional.normalize(features, dim=1)
    sim = normed @ normed.T
    sim[:, 0] = -float("inf")
    edges = torch.zeros_like(sim, dtype=torch.bool)
    for row in range(1, len(sim)):
        edges[row, sim[row].topk(k).indices] = True
    weights = torch.where(edges, sim, torch.zeros_like(sim))
    degree = weights.sum(1)
    scale = torch.where(degree > 0, degree, torch.ones_like(degree)).pow(-0.5)
    return scale[:, None] * weights * scale[None, :], edges


def dense_sym(adjacency):
    degree = adjacency.sum(1)
    scale = torch.where(degree > 0, degree, torch.ones_like(degree)).pow(-0.5)
    return scale[:, None] * adjacency * scale[None, :]


def rdft(x):
    """The orthonormal real DFT of each row, ``d // 2 + 1`` frequencies, as an explicit sum."""
    d = x.shape[1]
    n, k = torch.arange(d, dtype=torch.float64)[:, None], torch.arange(d // 2 + 1, dtype=torch.float64)[None, :]
    basis = torch.exp(-2j * math.pi * k * n / d) / math.sqrt(d)
    return x.double().to(torch.complex128) @ basis


def irdft(y, d):
    """Its inverse for even ``d``: the Hermitian-symmetric extension, real part."""
    n, k = torch.arange(d, dtype=torch.float64)[None, :], torch.arange(d // 2 + 1, dtype=torch.float64)[:, None]
    weight = torch.full((d // 2 + 1, 1), 2.0, dtype=torch.float64)
    weight[0] = weight[-1] = 1.0
    basis = weight * torch.exp(2j * math.pi * k * n / d) / math.sqrt(d)
    return (y.to(torch.complex128) @ basis).real.float()


def reference(net, train, masked):
    """SMORE's forward from dense matrices, written from the paper's equations."""
    n_users, n_items = net.n_users, net.n_items
    users, items = graphs.interaction_edges(train.dataset)
    bipartite = torch.zeros(n_users + n_items, n_users + n_items)
    bipartite[users, items + n_users] = 1
    bipartite[items + n_users, users] = 1
    adjacency = dense_sym(bipartite)
    R = adjacency[:n_users, n_users:]
    layer = torch.cat([net.user_embedding.weight, net.item_id_embedding.weight])
    total = layer
    for _ in range(net.n_ui_layers):
        layer = adjacency @ layer
        total = total + layer
    content = total / (net.n_ui_layers + 1)

    e, d = net.item_id_embedding.weight, net.item_id_embedding.weight.shape[1]
    knn = {"v": train.config["image_knn_k"], "t": train.config["text_knn_k"]}
    item_graph, edge_sets = {}, {}
    for m in net.modalities:
        item_graph[m], edge_sets[m] = dense_knn(net.feature(m), knn[m])
    spectra = {}
    for m in net.modalities:
        table = net.trained_feature(m)
        if m in masked:
            table = table[1:].mean(0, keepdim=True).expand(n_items, -1)
        spectra[m] = rdft(net.projection[m](table))

    def view(spectrum, purifier, graph):
        x = e * purifier(irdft(spectrum, d))
        if graph is not None:
            for _ in range(net.n_layers):
                x = graph @ x
        return torch.cat([R @ x, x])

    views = {
        m: view(spectra[m] * torch.view_as_complex(net.spectral_filter[m]).to(torch.complex128), net.purifier[m],
                None if m in masked else item_graph[m])
        for m in net.modalities
    }
    active = [m for m in net.modalities if m not in masked]
    fused_graph = None
    if active:
        present = torch.stack([edge_sets[m] for m in active]).any(0)
        values = torch.stack([torch.where(edge_sets[m], item_graph[m], torch.full_like(item_graph[m], -float("inf")))
                              for m in active]).amax(0)
        fused_graph = torch.where(present, values, torch.zeros_like(values))
    spectrum = torch.view_as_complex(net.fusion_filter).to(torch.complex128) * spectra["v"] * spectra["t"]
    fused = view(spectrum, net.fusion_purifier, fused_graph)
    side = net.fusion_preference_gate(content) * fused
    for m in net.modalities:
        side = side + net.preference_gate[m](content) * torch.softmax(net.query[m](fused), dim=1) * views[m]
    representation = content + side / 3
    return representation.split([n_users, n_items])


@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("masked", [(), ("v",), ("t",), ("v", "t")], ids=["joint", "v", "t", "both"])
def test_smore_forward_matches_the_dense_equations(tiny_dataset, tmp_path, masked, n_layers):
    net, train = build_eval_model("SMORE", tiny_dataset["root"], str(tmp_path / "saved"), seed=3, embedding_size=8,
                                  image_knn_k=4, text_knn_k=3, n_ui_layers=2, n_layers=n_layers)
    with torch.no_grad():
        for got, expected in zip(net.forward(frozenset(masked)), reference(net, train, frozenset(masked))):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_the_dft_sums_are_torch_fft():
    torch.manual_seed(0)
    x = torch.randn(3, 8)
    torch.testing.assert_close(rdft(x), torch.fft.rfft(x.double(), dim=1, norm="ortho"))
    y = torch.randn(3, 5, dtype=torch.complex128)
    torch.testing.assert_close(irdft(y, 8), torch.fft.irfft(y, n=8, dim=1, norm="ortho").float())


def test_max_pool_keeps_each_edges_largest_value():
    a = torch.sparse_coo_tensor(torch.tensor([[0, 1, 2], [1, 1, 0]]), torch.tensor([0.5, -0.2, 0.1]), (3, 3))
    b = torch.sparse_coo_tensor(torch.tensor([[1, 0, 2], [1, 2, 2]]), torch.tensor([-0.4, 0.3, 0.7]), (3, 3))
    expected = torch.tensor([[0.0, 0.5, 0.3], [0.0, -0.2, 0.0], [0.1, 0.0, 0.7]])
    torch.testing.assert_close(max_pool_graphs([a.coalesce(), b.coalesce()], 3).to_dense(), expected)


def test_smore_rejects_a_bad_knn_k(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="text_knn_k"):
        build_eval_model("SMORE", tiny_dataset["root"], str(tmp_path / "saved"), text_knn_k=0)
