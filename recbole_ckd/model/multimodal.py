"""Base class of every multimodal backbone: features on the device, masking, scoring."""

import contextlib
import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType
from torch import nn

from recbole_ckd.model import graphs
from recbole_ckd.model.graphs import spmm

# Above this fraction of all items among a batch's distinct items, a projection of item features is
# applied to the whole table rather than to the batch's rows gathered first (the row copy and its
# backward, a scatter into a table-sized gradient, then cost more than the extra projections:
# measured on CPU with Baby's 4096-d features, the two break even near two thirds).
PROJECT_ALL_FRACTION = 2 / 3


def margin(user_reps, pos_reps, neg_reps):
    """``d(u, a, b) = <U[u], I[a]> - <U[u], I[b]>`` per row."""
    return (user_reps * (pos_reps - neg_reps)).sum(dim=-1)


def bpr(margins):
    """``mean(-log sigmoid(d))`` over the triples."""
    return -F.logsigmoid(margins).mean()


def l2_per_triple(user_reps, pos_reps, neg_reps):
    """``0.5 (|U[u]|^2 + |I[i+]|^2 + |I[j-]|^2)`` summed over the triples, divided by their number."""
    return 0.5 * (user_reps.pow(2).sum() + pos_reps.pow(2).sum() + neg_reps.pow(2).sum()) / user_reps.shape[0]


class TrainingPass(NamedTuple):
    """One training forward: ``margins`` ``{mode: d [triples]}``, the "joint" mode's batch
    representations ``joint`` ``(U[u], I[pos], I[neg])``, and ``memo``, the intermediate
    tables the backbone kept for its objective (so no term propagates twice)."""

    margins: dict
    joint: tuple
    memo: dict


def _is_dense_layer(module):
    """A ``torch.nn`` layer with weights of its own, not a table of rows."""
    tables = (nn.Embedding, nn.EmbeddingBag, nn.ParameterDict, nn.ParameterList)
    return type(module).__module__.startswith("torch.nn.") and not isinstance(module, tables)


class EpochStats:
    """Per-step values summed on the device and read once per epoch (no per-step synchronisation)."""

    def __init__(self):
        self.sums, self.steps = {}, 0

    def add(self, values):
        for name, value in values.items():
            value = value.detach() if torch.is_tensor(value) else value
            self.sums[name] = self.sums.get(name, 0) + value
        self.steps += 1

    def pop(self):
        """``{name: mean per step}`` since the last pop."""
        sums, steps = self.sums, self.steps
        self.sums, self.steps = {}, 0
        return {name: float(value) / steps for name, value in sums.items()}


class MultimodalRecommender(GeneralRecommender):
    """A backbone that scores with dot products of user and item representations.

    Subclasses implement :meth:`forward`, which takes the set of *masked* modalities
    (docs/method.md, section 2: a masked modality's item features are replaced by their mean over all
    items, its user-side parameters by their mean over all users) and returns the tables of
    all user and all item representations. BPR training, full-ranking evaluation and CKD are
    built on that one method.

    The modality matrices come from the dataset, aligned to internal item ids, and live on the
    model's device as non-persistent buffers: data, not parameters, so they are not copied
    into checkpoints. ``active_modalities`` (config) restricts the model to a subset: the rest
    are masked in training and evaluation (a teacher is the backbone with one active modality).
    """

    input_type = InputType.PAIRWISE
    uses_modalities = True
    # whose code the backbone reproduces by default; result pages say so beside published numbers
    reference_code = "MMRec"
    # False for a backbone whose ranking ignores its modalities (BM3): no CKD variant, no
    # per-modality report
    ranks_with_modalities = True
    # False for a backbone with nothing to train (ItemKNNCBF): no CKD or balancing variant either
    trains = True
    # False for a backbone with no parameter of one modality alone (DA-MRS reads its features only
    # to build graphs): no OGM-GE variant, which modulates those parameters' gradients
    has_modality_parameters = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        features = getattr(dataset, "modality_features", None)
        if not features:
            raise ValueError(
                f"{type(self).__name__} needs modality features, but dataset '{config['dataset']}' has none: "
                "list them under 'modalities' in the dataset YAML (name: file.npy)."
            )
        self.modalities = tuple(features)
        for name, matrix in features.items():
            if not name.isidentifier():
                raise ValueError(f"Modality name {name!r} must be a plain identifier (letters, digits, _).")
            matrix = torch.from_numpy(matrix)
            self.register_buffer(f"_feat_{name}", matrix, persistent=False)
            # mean over real items (row 0 is padding)
            self.register_buffer(f"_feat_mean_{name}", matrix[1:].mean(dim=0, keepdim=True), persistent=False)
        active = config["active_modalities"]
        if active is None:
            active = self.modalities
        elif isinstance(active, str):
            active = [active]
        unknown = set(active) - set(self.modalities)
        if unknown or not active:
            raise ValueError(
                f"active_modalities={list(active)} must be a non-empty subset of the dataset's modalities {list(self.modalities)}."
            )
        self.default_masked = frozenset(self.modalities) - frozenset(active)
        self.reg_weight = config["reg_weight"]
        self.graph_cache_dir = os.path.join(config["checkpoint_dir"], "graphs")  # kNN item graphs, by content
        self._eval_tables = None
        self.last_loss_terms = {}
        self.loss_stats = EpochStats()

    # ------------------------------------------------------------ plugin hooks
    @classmethod
    def config_names(cls):
        """Model YAMLs to load, in order (the plugin's properties/model/<name>.yaml)."""
        return [cls.__name__]

    @classmethod
    def describe(cls, config):
        """The model in words, with the settings that define it under ``config`` (a study page's rows)."""
        return "the backbone"

    # ------------------------------------------------------------ features
    def feature(self, name):
        """Item features of modality ``name``, ``[n_items, dim]``, row 0 padding."""
        return getattr(self, f"_feat_{name}")

    def feature_mean(self, name):
        """Mean feature vector of modality ``name`` over all items, ``[1, dim]``."""
        return getattr(self, f"_feat_mean_{name}")

    def feature_dim(self, name):
        return self.feature(name).shape[1]

    def init_trained_features(self, config, modalities=None):
        """``train_features``: fine-tune the feature tables of ``modalities`` (MMRec's backbones
        load them with ``freeze=False``) as trained copies, part of the model's checkpoints."""
        self.train_features = bool(config["train_features"])
        if self.train_features:
            names = self.modalities if modalities is None else modalities
            self.feature_table = nn.ParameterDict({m: nn.Parameter(self.feature(m).clone()) for m in names})

    def trained_feature(self, name, items=None):
        """Modality ``name``'s features as trained (the fixed ones without ``train_features``)."""
        tables = getattr(self, "feature_table", None)
        table = tables[name] if tables is not None and name in tables else self.feature(name)
        return table if items is None else table[items]

    def trained_feature_mean(self, name):
        """Mean of :meth:`trained_feature` over all items, ``[1, dim]``."""
        tables = getattr(self, "feature_table", None)
        if tables is not None and name in tables:
            return tables[name][1:].mean(dim=0, keepdim=True)
        return self.feature_mean(name)

    def distinct_items(self, items):
        """``(unique, inverse, project_all)`` of a batch's ``items``: what :meth:`project_rows`
        needs, computed once for several projections of the same items."""
        unique, inverse = torch.unique(items, return_inverse=True)
        return unique, inverse, len(unique) > PROJECT_ALL_FRACTION * self.n_items

    def project_rows(self, layer, table, items, distinct=None):
        """``layer(table)[items]`` for a row-wise ``layer`` (a projection), each distinct row
        projected once, or the whole table when most of it occurs (``PROJECT_ALL_FRACTION``):
        the same values and gradients at the smaller cost. ``distinct``: :meth:`distinct_items`
        of ``items``, if already computed."""
        unique, inverse, project_all = self.distinct_items(items) if distinct is None else distinct
        if project_all:
            return layer(table)[items]
        return layer(table[unique])[inverse]

    @staticmethod
    def user_mean(weight):
        """Mean of a per-user parameter over all users (row 0 is padding), ``[1, dim]``."""
        return weight[1:].mean(dim=0, keepdim=True)

    def modality_parameters(self):
        """``{m: [parameters]}``: the parameters that belong to modality ``m`` alone (what OGM-GE
        modulates). By convention a backbone keeps them in a ``ModuleDict`` / ``ParameterDict``
        keyed by the modality's name (``projection.v``, ``feature_table.t``, ``branches.v``, ...);
        a backbone laid out otherwise overrides this. Shared parameters (ID embeddings, fusion
        weights) belong to no modality."""
        groups = {m: [] for m in self.modalities}
        for name, param in self.named_parameters():
            owners = [m for m in self.modalities if m in name.split(".")]
            if len(owners) == 1:
                groups[owners[0]].append(param)
        return groups

    def modality_encoders(self):
        """``{m: [parameters]}``: modality ``m``'s own dense encoder layers (projections, modality
        MLPs, graph layers), what OGM-GE modulates: :meth:`modality_parameters` held by a
        ``torch.nn`` layer (``nn.Linear`` and the like), never a table: an ``nn.Embedding``, a
        ``ParameterDict`` / ``ParameterList`` entry or a bare parameter of the backbone's own
        modules (per-user preferences, trained feature tables), whose gradient covers only the
        rows a batch reaches. A backbone laid out otherwise overrides this."""
        layers = {id(p) for module in self.modules() if _is_dense_layer(module) for p in module.parameters(recurse=False)}
        return {m: [p for p in params if id(p) in layers] for m, params in self.modality_parameters().items()}

    def only(self, name):
        """The masked set of the "only ``name``" mode."""
        return frozenset(self.modalities) - {name}

    # ------------------------------------------------------------ representations
    def forward(self, masked=frozenset()):
        """``(user_reps [n_users, d], item_reps [n_items, d])`` with ``masked`` modalities at their mean."""
        raise NotImplementedError

    def batch_representations(self, users, items, masked=frozenset()):
        """Representations of the given users and items; backbones may compute only these rows."""
        user_reps, item_reps = self.forward(masked)
        return user_reps[users], item_reps[items]

    def batch_representations_modes(self, users, items, modes, memo=None):
        """``{name: (user_reps, item_reps)}`` for every ``{name: masked}`` in ``modes``.

        The CKD student needs several modes per step; backbones override this to share the
        work the modes have in common (a late-fusion branch the mask does not touch is the
        same computation in every mode), keeping what their objective needs in ``memo``.
        """
        return {name: self.batch_representations(users, items, masked) for name, masked in modes.items()}

    def triple_margins(self, users, pos, neg, modes, joint_rows=None):
        """One training forward: a :class:`TrainingPass` with ``d(u, pos, neg)`` in every
        ``{name: masked}`` of ``modes``.

        Its ``joint`` is ``(U[users], I[pos], I[neg])`` of the "joint" mode (for the L2 term)
        for the first ``joint_rows`` triples (all when None), or None without a "joint" mode.
        Backbones whose score is a sum over branches override this to add branch margins
        instead of building every mode's representations.
        """
        memo = {}
        reps = self.batch_representations_modes(users, torch.cat([pos, neg]), modes, memo)
        margins, joint = {}, None
        for name, (user_reps, item_reps) in reps.items():
            pos_reps, neg_reps = item_reps.split(len(pos))
            margins[name] = margin(user_reps, pos_reps, neg_reps)
            if name == "joint":
                joint = tuple(reps[:joint_rows] for reps in (user_reps, pos_reps, neg_reps))
        return TrainingPass(margins, joint, memo)

    # ------------------------------------------------------------ training
    def objective(self, interaction, step):
        """The backbone's whole training objective as named, weighted terms that sum to the loss.

        ``step`` is the :class:`TrainingPass` of the batch's triples, whose "joint" mode is the
        model's own (the joint model; a teacher's "only m" mode). The plain model and its CKD
        student both call this, so a student keeps every term. Here: BPR plus L2 on the batch
        representations; backbones with other or more terms override it.
        """
        return {"bpr": bpr(step.margins["joint"]), "l2": self.reg_weight * l2_per_triple(*step.joint)}

    def batch_triples(self, interaction):
        """``(users, positives, negatives)`` of a pairwise training batch."""
        return interaction[self.USER_ID], interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]

    def training_pass(self, interaction):
        """The forward of a plain training step: the batch's triples in the model's own mode."""
        return self.triple_margins(*self.batch_triples(interaction), {"joint": self.default_masked})

    def calculate_loss(self, interaction):
        return self.sum_terms(self.objective(interaction, self.training_pass(interaction)))

    def sum_terms(self, terms):
        """The loss: the sum of ``terms``, kept as ``last_loss_terms`` (named in a NaN report) and
        added to this epoch's statistics."""
        loss = sum(terms.values())
        self.record_terms({**terms, "loss": loss})
        return loss

    def record_terms(self, terms):
        """Keep a step's named loss terms (detached) for the NaN report and the epoch statistics."""
        self.last_loss_terms = {name: value.detach() for name, value in terms.items()}
        self.loss_stats.add(self.last_loss_terms)

    def pop_epoch_stats(self):
        """Mean of every loss term per step over the epoch (read once per epoch)."""
        return self.loss_stats.pop()

    # ------------------------------------------------------------ evaluation
    def train(self, mode=True):
        self._eval_tables = None  # parameters are about to change
        return super().train(mode)

    def load_state_dict(self, state_dict, strict=True):
        self._eval_tables = None
        return super().load_state_dict(state_dict, strict=strict)

    def eval_tables(self):
        """The tables used for ranking, computed once per evaluation (not once per batch)."""
        if self._eval_tables is None or self.training:
            with torch.no_grad():
                self._eval_tables = self.forward(self.default_masked)
        return self._eval_tables

    def predict(self, interaction):
        user_reps, item_reps = self.eval_tables()
        users, items = interaction[self.USER_ID], interaction[self.ITEM_ID]
        return (user_reps[users] * item_reps[items]).sum(dim=-1)

    def full_sort_predict(self, interaction):
        user_reps, item_reps = self.eval_tables()
        return (user_reps[interaction[self.USER_ID]] @ item_reps.T).view(-1)

    @contextlib.contextmanager
    def masked_as(self, masked):
        """Temporarily rank with ``masked`` modalities (e.g. the student's "only m" mode)."""
        saved, self.default_masked = self.default_masked, frozenset(masked)
        self._eval_tables = None
        try:
            yield self
        finally:
            self.default_masked = saved
            self._eval_tables = None

    # ------------------------------------------------------------ graphs
    def build_item_graphs(self, knn_k, weighted):
        """(Re)build each modality's frozen kNN item graph of the raw features (top-``knn_k``
        cosine neighbours, self included; cosine-weighted or unweighted edges, ``D^-1/2 S D^-1/2``),
        built where the model runs and cached under ``<checkpoint_dir>/graphs``; read with
        :meth:`item_graph`. Call it again after changing the features."""
        for m in self.modalities:
            graph = graphs.knn_graph(self.feature(m).to(self.device), int(knn_k), weighted=weighted,
                                     normalization="sym", cache_dir=self.graph_cache_dir)
            self.register_buffer(f"_item_graph_{m}", graph.to(self.device), persistent=False)
        self._adjacency_cache = {}

    def item_graph(self, m):
        """Modality ``m``'s frozen kNN item graph (sparse ``[n_items, n_items]``)."""
        return getattr(self, f"_item_graph_{m}")

    def edge_product(self, dst, src, n_dst, n_src):
        """The CSR products (:class:`~recbole_ckd.model.graphs.EdgeProduct`) of the model's fixed
        edges ``dst <- src``, built once on the device the edges are on (again after a move)."""
        cached = getattr(self, "_edge_product", None)
        if cached is None or cached[0] != dst.device:
            self._edge_product = cached = (dst.device, graphs.EdgeProduct(dst, src, n_dst, n_src))
        return cached[1]

    def lightgcn(self, graph, user_weight, item_weight, n_layers):
        """LightGCN: the mean of layers ``0..n_layers`` of ``graph``-propagated embeddings,
        split into ``(users, items)``."""
        ego = torch.cat([user_weight, item_weight])
        total = ego
        for _ in range(n_layers):
            ego = spmm(graph, ego)
            total = total + ego
        return (total / (n_layers + 1)).split([self.n_users, self.n_items])

    def bipartite_adjacency(self, dataset, normalization="mean", self_loops=False):
        """The user-item training graph of ``dataset`` (see :meth:`user_item_graph`); a repeated
        (user, item) row is one edge."""
        return self.user_item_graph(*graphs.interaction_edges(dataset), normalization, self_loops)

    def user_item_graph(self, users, items, normalization="mean", self_loops=False):
        """The bipartite graph of the edges ``(users, items)`` over ``n_users + n_items`` nodes
        (items after users), sparse, on the device: row-normalised (``mean``, ``D^-1 A``) or
        ``D^-1/2 A D^-1/2`` (``sym``); with ``self_loops``, ``A + I`` (degrees include the loop)."""
        if normalization not in ("mean", "sym"):
            raise ValueError(f"normalization must be 'mean' or 'sym', got {normalization!r}")
        items = items + self.n_users
        rows, cols = torch.cat([users, items]), torch.cat([items, users])
        n = self.n_users + self.n_items
        if self_loops:
            loops = torch.arange(n, device=rows.device)
            rows, cols = torch.cat([rows, loops]), torch.cat([cols, loops])
        kind = "row" if normalization == "mean" else "sym"
        values = torch.ones(len(rows), device=rows.device)
        return graphs.normalized_adjacency(rows, cols, values, n, kind).to(self.device)


class ItemGraphRecommender(MultimodalRecommender):
    """A backbone whose item representation is a collaborative part plus an item-item graph
    term (LATTICE, FREEDOM): only the graph term depends on the mask, so the collaborative
    part is computed once for all modes. Subclasses implement ``_collaborative()`` -> ``(user
    table, item table)`` and ``_item_graph_term(masked)`` -> item table (or 0)."""

    def forward(self, masked=frozenset()):
        users, items = self._collaborative()
        return users, items + self._item_graph_term(masked)

    def batch_representations_modes(self, users, items, modes, memo=None):
        user_all, item_all = self._collaborative()
        user_reps = user_all[users]
        return {
            name: (user_reps, (item_all + self._item_graph_term(masked))[items]) for name, masked in modes.items()
        }


class NodeTableRecommender(MultimodalRecommender):
    """A backbone that computes one table over all ``n_users + n_items`` nodes (users first):
    subclasses implement ``representation(masked, memo)``, ``memo`` (a dict) sharing the parts
    several masking modes have in common (GRCN, EgoGCN)."""

    def representation(self, masked=frozenset(), memo=None):
        raise NotImplementedError

    def forward(self, masked=frozenset()):
        return self.representation(masked).split([self.n_users, self.n_items])

    def batch_representations_modes(self, users, items, modes, memo=None):
        memo, result = {} if memo is None else memo, {}
        for name, masked in modes.items():
            user_reps, item_reps = self.representation(masked, memo).split([self.n_users, self.n_items])
            result[name] = (user_reps[users], item_reps[items])
        return result


class FixedItemGraphs(MultimodalRecommender):
    """The item-item graph of FREEDOM and DRAGON (listed before the backbone's other base class):
    each modality's frozen, unweighted kNN graph of the raw features, mixed with fixed weights.

    ``S = sum_m w_m S_m`` with ``S_m`` the top-``knn_k`` cosine neighbours (self included),
    ``D^-1/2 S_m D^-1/2``. Weights: ``modality_weights`` (a dict, normalised to sum 1) if given;
    otherwise ``mm_image_weight`` for the image modality ``v`` and ``1 - mm_image_weight``
    shared equally by the others (equal weights when there is no ``v``, weight 1 for a single
    modality). Masking modality m drops ``S_m`` and renormalises the remaining weights.
    """

    def build_fixed_item_graphs(self, config):
        """Read ``knn_k`` and the modality weights from ``config`` and build the graphs."""
        self.knn_k = int(config["knn_k"])
        if self.knn_k < 1:
            raise ValueError(f"{type(self).__name__} needs knn_k >= 1, got {self.knn_k}.")
        self.modality_weight = self._modality_weights(config)
        self.build_item_graphs(self.knn_k, weighted=False)

    def _modality_weights(self, config):
        given = config["modality_weights"]
        if given is not None:
            given = dict(given)
            if set(given) != set(self.modalities):
                raise ValueError(
                    f"modality_weights must give a weight to each modality {list(self.modalities)}, got {given}."
                )
            raw = {m: float(given[m]) for m in self.modalities}
        else:
            image = float(config["mm_image_weight"])
            if not 0.0 <= image <= 1.0:
                raise ValueError(f"mm_image_weight must lie in [0, 1], got {image}.")
            others = [m for m in self.modalities if m != "v"]
            if "v" in self.modalities and others:
                raw = {m: image if m == "v" else (1.0 - image) / len(others) for m in self.modalities}
            else:
                raw = {m: 1.0 for m in self.modalities}
        if any(w < 0 for w in raw.values()) or sum(raw.values()) <= 0:
            raise ValueError(f"{type(self).__name__}'s modality weights must be >= 0 with a positive sum, got {raw}.")
        total = sum(raw.values())
        return {m: w / total for m, w in raw.items()}

    def item_adjacency(self, masked=frozenset()):
        """``S`` over the unmasked modalities, weights renormalised (sparse), or None."""
        active = tuple(m for m in self.modalities if m not in masked and self.modality_weight[m] > 0)
        if not active:
            return None
        key = (active, self.item_graph(active[0]).device)
        if key not in self._adjacency_cache:
            total = sum(self.modality_weight[m] for m in active)
            parts = [
                (self.item_graph(m).indices(), self.modality_weight[m] / total * self.item_graph(m).values())
                for m in active
            ]
            self._adjacency_cache[key] = graphs.sparse_sum(parts, self.n_items).coalesce()
        return self._adjacency_cache[key]


class PrunedUserItemGraph(MultimodalRecommender):
    """The degree-sensitive pruning of the user-item graph of FREEDOM (also PGL's local
    principal subgraph and MMGCF's edge dropout), listed before the backbone's other base class.

    The full training graph is ``D^-1/2 A D^-1/2`` (a repeated interaction is one edge). Every
    epoch, :meth:`pre_epoch` keeps ``int(|E| keep_share)`` of the ``|E|`` training edges (at
    least one), drawn without replacement with edge ``(u, i)``'s probability proportional to
    ``1 / sqrt(d_u d_i)`` (edges between popular nodes are the likeliest to be dropped), and
    normalises the kept graph with its own degrees; with ``keep_share >= 1`` nothing is
    pruned. The torch RNG of the model's device draws the sample, so a resumed run (which
    restores the RNG states) draws what the uninterrupted one did. :meth:`training_graph` is
    the pruned graph in training and the full graph otherwise.
    """

    def build_pruned_graph(self, dataset, keep_share):
        """Read the training edges of ``dataset`` and their sampling weights; ``keep_share``: the
        share of edges each epoch keeps."""
        self.keep_share = float(keep_share)
        users, items = graphs.interaction_edges(dataset)
        self.register_buffer("_edge_users", users.to(self.device), persistent=False)
        self.register_buffer("_edge_items", items.to(self.device), persistent=False)
        self.register_buffer("full_graph", self.user_item_graph(users, items, "sym"), persistent=False)
        degree_u = torch.bincount(users, minlength=self.n_users).float()
        degree_i = torch.bincount(items, minlength=self.n_items).float()
        probabilities = (degree_u[users] * degree_i[items]).rsqrt()
        self.register_buffer("_edge_probabilities", probabilities.to(self.device), persistent=False)
        self.register_buffer("pruned_graph", None, persistent=False)

    def pre_epoch(self, epoch):
        """A new pruned user-item graph for this epoch's training."""
        if self.keep_share >= 1:
            self.pruned_graph = None  # the full graph
            return
        n_edges = len(self._edge_probabilities)
        keep = max(int(n_edges * self.keep_share), 1)
        kept = torch.multinomial(self._edge_probabilities, keep, replacement=False)
        self.pruned_graph = self.user_item_graph(self._edge_users[kept], self._edge_items[kept], "sym")

    def training_graph(self):
        """The pruned graph in training (once drawn), the full graph otherwise."""
        return self.pruned_graph if self.training and self.pruned_graph is not None else self.full_graph
