"""Fast loaders: training batches built on the device, evaluation batches gathered vectorised.

Training: RecBole's ``TrainDataLoader`` gathers each batch from the dataset in Python, samples its
negatives with numpy and copies it to the device: on a GPU at Baby scale that costs about as
much as the training step itself. :class:`DeviceTrainDataLoader` keeps the training pairs on the
device, shuffles them with a permutation, draws every negative of the epoch at once (uniform
over items ``1..n_items-1``, as RecBole's uniform sampler) and redraws only those that hit a
training item of their user (a sorted-key ``searchsorted`` test), then yields slices.

Two ways to form an epoch's batches (``train_sampler``):

- ``interactions`` (default, RecBole's and MMRec's): every training interaction once per epoch,
  shuffled, in batches of ``train_batch_size``;
- ``user_uniform`` (the CKD reference code's): ``n_train // B + 1`` batches per epoch, each of
  ``B = train_batch_size`` distinct users drawn uniformly from the users with training data
  (with replacement only when ``B`` exceeds their number), each with one of their training
  items drawn uniformly and one uniform negative.

The random draws come from the loader's own CPU generator (RecBole's ``generator``, seeded
from ``seed`` and saved in every checkpoint), so a run is reproducible from its seed and
resumes bit-identically on the same device. The stream differs from RecBole's numpy sampler:
``device_sampling: False`` restores RecBole's loader. Evaluation: :class:`FullSortEvalLoader`.
"""

import torch
from recbole.data.dataloader.general_dataloader import FullSortEvalDataLoader, TrainDataLoader
from recbole.data.interaction import Interaction
from recbole.utils import InputType, ModelType

from recbole_ckd.errors import ConfigError

MAX_REDRAW_ROUNDS = 1000


class DeviceTrainDataLoader(TrainDataLoader):
    """RecBole's training loader for general pairwise models with one uniform negative per pair
    (or none); its batches hold the user, item and negative item fields only."""

    @staticmethod
    def supports(config):
        """True for the setups this loader reproduces: a general pairwise model, one static uniform
        negative per pair or none."""
        if config["MODEL_TYPE"] != ModelType.GENERAL or config["MODEL_INPUT_TYPE"] != InputType.PAIRWISE:
            return False
        args = config["train_neg_sample_args"] or {}
        if args.get("distribution", "none") == "none" or args.get("sample_num", "none") == "none":
            return True
        return args["distribution"] == "uniform" and args["sample_num"] == 1 and not args.get("dynamic", False)

    def __init__(self, config, dataset, sampler, shuffle=False):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        self.device = torch.device(config["device"])
        self.with_negatives = self.neg_sample_args["distribution"] != "none"
        self.n_items = dataset.item_num
        users = dataset.inter_feat[self.uid_field].long()
        items = dataset.inter_feat[self.iid_field].long()
        self.users, self.items = users.to(self.device), items.to(self.device)
        # every training (user, item) pair as one sorted key: a negative must not be among them
        self.used_keys = torch.unique(users * self.n_items + items).to(self.device)
        self.user_uniform = config["train_sampler"] == "user_uniform"
        if self.user_uniform:
            if not self.with_negatives:
                raise ConfigError("train_sampler: user_uniform draws a negative for every user; this model samples none.")
            # each user's distinct training items, contiguous: user u's are distinct_items[start[u]:start[u] + count[u]]
            self.distinct_users, self.distinct_items = self.used_keys // self.n_items, self.used_keys % self.n_items
            self.batch_users, self.user_counts = torch.unique_consecutive(self.distinct_users, return_counts=True)
            self.user_starts = torch.cumsum(self.user_counts, dim=0) - self.user_counts
            self.n_batches = len(self.users) // self.step + 1  # the reference's count

    def __len__(self):
        return self.n_batches if self.user_uniform else super().__len__()

    def __iter__(self):
        if self.user_uniform:
            yield from self._user_uniform_batches()
            return
        n = len(self.users)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.device)
            users, items = self.users[order], self.items[order]
        else:
            users, items = self.users, self.items
        fields = {self.uid_field: users, self.iid_field: items}
        if self.with_negatives:
            fields[self.neg_item_id] = self.sample_negatives(users)
        for start in range(0, n, self.step):
            yield Interaction({name: values[start : start + self.step] for name, values in fields.items()})

    def _user_uniform_batches(self):
        n_users, size = len(self.batch_users), self.step
        for _ in range(self.n_batches):
            if size <= n_users:
                index = torch.randperm(n_users, generator=self.generator)[:size]
            else:
                index = torch.randint(n_users, (size,), generator=self.generator)
            index = index.to(self.device)
            # a training item of each user, uniform over the user's distinct items
            offset = (torch.rand(size, generator=self.generator).to(self.device) * self.user_counts[index]).long()
            users = self.batch_users[index]
            positives = self.distinct_items[self.user_starts[index] + offset]
            yield Interaction(
                {self.uid_field: users, self.iid_field: positives, self.neg_item_id: self.sample_negatives(users)}
            )

    def sample_negatives(self, users):
        """One item per user, uniform over the items the user has no training interaction with."""
        negatives = self._draw(len(users))
        pending = torch.arange(len(users), device=self.device)
        for _ in range(MAX_REDRAW_ROUNDS):
            hit = self._is_used(users[pending], negatives[pending])
            pending = pending[hit]
            if len(pending) == 0:
                return negatives
            negatives[pending] = self._draw(len(pending))
        stuck = torch.unique(users[pending])[:10].tolist()
        raise RuntimeError(
            f"No negative item found for users {stuck} after {MAX_REDRAW_ROUNDS} draws: they interacted with "
            f"(nearly) every item. Remove them from the dataset or set device_sampling: False."
        )

    def _draw(self, count):
        return torch.randint(1, self.n_items, (count,), generator=self.generator).to(self.device)

    def _is_used(self, users, items):
        keys = users * self.n_items + items
        position = torch.searchsorted(self.used_keys, keys).clamp(max=len(self.used_keys) - 1)
        return self.used_keys[position] == keys


class FullSortEvalLoader(FullSortEvalDataLoader):
    """RecBole's full-ranking evaluation loader with a vectorised ``collate_fn``.

    RecBole's builds each batch's history and positive index pairs with a Python loop over
    the batch's users (two ``full_like`` calls per user): about half of an evaluation pass at
    Baby scale. Here every user's history and positive items are packed once into flat
    arrays with offsets, and a batch gathers its ranges with ``repeat_interleave``. The batch
    tuple is RecBole's, in the same order. Call :meth:`repack` after changing
    ``uid2history_item`` or ``uid2positive_item``.
    """

    def __init__(self, config, dataset, sampler, shuffle=False):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        self.repack()

    def repack(self):
        if not self.is_sequential:
            self._history = _pack(self.uid2history_item)
            self._positive = _pack(self.uid2positive_item)

    def collate_fn(self, index):
        if self.is_sequential:
            return super().collate_fn(index)
        user_df = self.user_df[torch.as_tensor(index)]
        uids = user_df[self.uid_field]
        history_u, history_i = _gather(*self._history, uids)
        positive_u, positive_i = _gather(*self._positive, uids)
        return user_df, (history_u, history_i), positive_u, positive_i


def _pack(per_user):
    """``(offsets, values)``: user u's items are ``values[offsets[u]:offsets[u + 1]]`` (None: no items)."""
    lists = [torch.as_tensor(items if items is not None else [], dtype=torch.long) for items in per_user]
    counts = torch.tensor([len(items) for items in lists], dtype=torch.long)
    offsets = torch.zeros(len(lists) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(counts, dim=0)
    return offsets, torch.cat(lists) if lists else torch.zeros(0, dtype=torch.long)


def _gather(offsets, values, uids):
    """``(rows, items)`` of the users ``uids``: row k (the k-th user of the batch) once per item."""
    starts, counts = offsets[uids], offsets[uids + 1] - offsets[uids]
    rows = torch.repeat_interleave(torch.arange(len(uids)), counts)
    first_of_row = torch.repeat_interleave(torch.cumsum(counts, dim=0) - counts, counts)
    return rows, values[torch.repeat_interleave(starts, counts) + torch.arange(len(rows)) - first_of_row]


def build_dataloaders(config, dataset):
    """RecBole's split and samplers (``dataset.build``, ``create_samplers``) with this module's loaders:
    :class:`DeviceTrainDataLoader` when ``device_sampling`` is on and supports the model's
    sampling, :class:`FullSortEvalLoader` for full-ranking evaluation; RecBole's otherwise."""
    from recbole.data.utils import create_samplers, get_dataloader

    built = dataset.build()
    samplers = create_samplers(config, dataset, built)
    if config["device_sampling"] and DeviceTrainDataLoader.supports(config):
        train_class = DeviceTrainDataLoader
    elif config["train_sampler"] == "user_uniform":
        raise ConfigError(
            "train_sampler: user_uniform needs the device loader: set device_sampling: True (a general pairwise "
            "model with one uniform negative per pair)."
        )
    else:
        train_class = get_dataloader(config, "train")
    loaders = [train_class(config, built[0], samplers[0], shuffle=config["shuffle"])]
    for phase, part, sampler in (("valid", built[1], samplers[1]), ("test", built[2], samplers[2])):
        eval_class = get_dataloader(config, phase)
        if eval_class is FullSortEvalDataLoader:
            eval_class = FullSortEvalLoader
        loaders.append(eval_class(config, part, sampler, shuffle=False))
    return tuple(loaders)
