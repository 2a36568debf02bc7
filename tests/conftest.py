"""Shared fixtures: tiny MMRec-format datasets written by hand, so every test can see its data;
the config of a fast run; spies that record which epochs trained and which checkpoints were written."""

import os
import sys
import threading
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest
import torch

# RecBole's Config must never read pytest's own argv; the plugin passes cmd_args explicitly.
FAST = {
    "epochs": 1,
    "show_progress": False,
    "state": "WARNING",
    "use_gpu": False,
    "train_batch_size": 64,
}


def fast_config(data_root, checkpoint_dir=None, **extra):
    """The config dict of a fast run on the datasets under ``data_root`` (checkpoints in
    ``checkpoint_dir``, RecBole's default if None)."""
    settings = {**FAST, "data_path": str(data_root), **extra}
    if checkpoint_dir is not None:
        settings["checkpoint_dir"] = str(checkpoint_dir)
    return settings


def fast_ckd_config(data_root, checkpoint_dir, **extra):
    """A fast CKD run of three epochs (``extra`` overrides), never stopped early."""
    return fast_config(data_root, checkpoint_dir, **{"epochs": 3, "stopping_step": 100, "gd_samples": 20, **extra})


def fast_args(given=()):
    """FAST as command-line flags, leaving out the keys the ``--key=value`` flags ``given`` set."""
    return [f"--{k}={v}" for k, v in FAST.items() if not any(a.startswith(f"--{k}=") for a in given)]


def write_tiny_mmrec(root, name="tiny", n_users=24, n_items=30, dims=None, seed=0, features=None, rows=None):
    """A small MMRec-format dataset. Rows are shuffled so RecBole's first-appearance ids differ
    from the raw ids; every user has interactions in all three splits."""
    rng = np.random.default_rng(seed)
    dims = dims or {"v": 12, "t": 6}
    if rows is None:
        rows = []
        for u in range(n_users):
            items = rng.choice(n_items, size=10, replace=False)
            labels = [0] * 8 + [1, 2]
            rows += [(u, int(i), 1.0, 1000 + k, lab) for k, (i, lab) in enumerate(zip(items, labels))]
        # make sure every item id occurs (feature rows == max id + 1)
        rows += [(int(rng.integers(n_users)), i, 1.0, 5000, 0) for i in range(n_items)]
        order = rng.permutation(len(rows))
        rows = [rows[k] for k in order]
    df = pd.DataFrame(rows, columns=["userID", "itemID", "rating", "timestamp", "x_label"])
    df = df.drop_duplicates(["userID", "itemID"], keep="last")
    path = os.path.join(root, name)
    os.makedirs(path, exist_ok=True)
    df.to_csv(os.path.join(path, f"{name}.inter"), sep="\t", index=False)
    if features is None:
        features = {m: rng.normal(size=(n_items, d)).astype(np.float32) for m, d in dims.items()}
    files = {"v": "image_feat.npy", "t": "text_feat.npy"}
    for m, matrix in features.items():
        np.save(os.path.join(path, files.get(m, f"{m}_feat.npy")), matrix)
    return path, df, features


def build_model(name, root, checkpoint_dir=None, seed=0, **extra):
    """``(model, train loader)``: the model ``name``, its parameters drawn after ``seed``, on the
    tiny dataset under ``root`` (``train.config`` is the run's Config)."""
    import torch

    from recbole_ckd.config import Config
    from recbole_ckd.data.dataset import data_preparation
    from recbole_ckd.model import MODELS
    from recbole_ckd.registry import create_dataset

    config = Config(name, "tiny", config_dict=fast_config(root, checkpoint_dir, **extra))
    train, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(seed)
    return MODELS[name](config, train.dataset), train


def build_eval_model(name, root, checkpoint_dir=None, seed=0, **extra):
    """:func:`build_model` with the model in evaluation mode (no dropout)."""
    model, train = build_model(name, root, checkpoint_dir, seed, **extra)
    return model.eval(), train


def scores(model, masked=()):
    """Every user-item score with ``masked`` modalities at their mean."""
    import torch

    with torch.no_grad():
        users, items = model.forward(frozenset(masked))
    return users @ items.T


def build_baseline_pair(root, tmp_path, backbone, suffix, **extra):
    """A plain backbone and its balancing baseline ``<backbone>_<suffix>`` in the same state, and
    one training batch."""
    import torch

    from recbole_ckd.config import Config
    from recbole_ckd.data.dataset import data_preparation
    from recbole_ckd.model import MODELS
    from recbole_ckd.registry import create_dataset

    settings = fast_config(root, tmp_path / "saved", **extra)
    config = Config(backbone, "tiny", config_dict=settings)
    train, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    plain = MODELS[backbone](config, train.dataset)
    baseline = MODELS[f"{backbone}_{suffix}"](Config(f"{backbone}_{suffix}", "tiny", config_dict=settings), train.dataset)
    baseline.load_state_dict(plain.state_dict())
    return plain.train(), baseline.train(), next(iter(train))


def loss_and_grads(model, batch):
    """One step's loss and every parameter's gradient (the same draws for any dropout or noise)."""
    import torch

    model.zero_grad()
    torch.manual_seed(5)
    loss = model.calculate_loss(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def attach_random_teachers(student, dim=6, seed=1):
    """Random frozen teacher tables for a CKD student built outside the trainer."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    student.set_teacher_tables(
        {m: (torch.randn(student.n_users, dim, generator=generator), torch.randn(student.n_items, dim, generator=generator))
         for m in student.modalities}
    )
    return student


@pytest.fixture(autouse=True)
def private_config_home(tmp_path, monkeypatch):
    """Per-user files (the sweep signing key) go to the test's folder, never the real home."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config-home"))


# every masking mode of a two-modality dataset, and their test ids
MASKS = [set(), {"v"}, {"t"}, {"v", "t"}]
MASK_IDS = ["joint", "masked-v", "masked-t", "masked-all"]


def write_hand_made(root, train, n_items=8):
    """A hand-checkable MMRec dataset under ``root``: the training items ``{user: [items]}``, and for
    each user one validation and one test item outside them; 5-d ``v`` and 3-d ``t`` features."""
    rows = [(u, i, 1.0, 1000 + k, 0) for u, items in train.items() for k, i in enumerate(items)]
    for u, items in train.items():
        outside = [i for i in range(n_items) if i not in items]
        rows += [(u, outside[0], 1.0, 2000, 1), (u, outside[1], 1.0, 3000, 2)]
    write_tiny_mmrec(str(root), n_items=n_items, rows=rows, dims={"v": 5, "t": 3})
    return str(root)


def training_matrix(train):
    """The 0/1 ``[n_users, n_items]`` training matrix of a RecBole training loader, dense."""
    return torch.from_numpy((train.dataset.inter_matrix(form="coo").toarray() > 0).astype(np.float32))


@pytest.fixture
def tiny_dataset(tmp_path):
    path, df, features = write_tiny_mmrec(str(tmp_path / "data"))
    return {"root": str(tmp_path / "data"), "name": "tiny", "path": path, "inter": df, "features": features}


# Bounds every socket wait, so a broken test fails quickly instead of hanging.
HTTP_TIMEOUT = 5


class _Handler(BaseHTTPRequestHandler):
    """Serves self.server.files[path] = (body, mode). Modes:
    normal         honours Range with 206
    truncate_once  first GET promises the whole body but sends half, then honours Range
    ignore_range   like truncate_once, but always answers 200 with the full body afterwards
    always_trunc   never sends more than the first half of the body
    """

    def do_GET(self):
        server = self.server
        rng = self.headers.get("Range")
        server.requests.append((self.path, rng))
        if self.path not in server.files:
            self.send_error(404)
            return
        body, mode = server.files[self.path]
        first = sum(path == self.path for path, _ in server.requests) == 1

        start = 0
        if rng and mode != "ignore_range":
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()

        if mode == "always_trunc":
            payload = body[start:max(start, len(body) // 2)]
        elif mode in ("truncate_once", "ignore_range") and first:
            payload = payload[: len(payload) // 2]
        # HTTP/1.0: the connection closes after this, so the client sees a short body.
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """A throwaway HTTP server on 127.0.0.1: ``files[path] = (body, mode)`` (modes: see
    ``_Handler``), ``requests`` (path, Range header) as they came, ``url`` its root."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.files, httpd.requests = {}, []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    # A short poll interval keeps shutdown() (and so each test) fast.
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(HTTP_TIMEOUT)


@pytest.fixture
def run_config(tmp_path):
    """Config dict for a fast run whose outputs stay in tmp_path."""

    def make(data_root, **extra):
        return fast_config(data_root, tmp_path / "saved", **extra)

    return make


Epoch = namedtuple("Epoch", "model modalities index lr")


class EpochLog(list):
    """Every training epoch a trainer began, in order: the model, its active modalities (a
    teacher's one, or None), the epoch index and the learning rate it began with."""

    def __init__(self, monkeypatch):
        super().__init__()
        from recbole_ckd.trainer import ResumableTrainer

        self.interrupted, self._stops = [], []
        real = ResumableTrainer._train_epoch

        def recorded(trainer, train_data, epoch_idx, *args, **kwargs):
            model, active = trainer.config["model"], trainer.config["active_modalities"]
            self.append(Epoch(model, tuple(active) if active else None, epoch_idx,
                              trainer.optimizer.param_groups[0]["lr"]))
            for stop in self._stops:
                if stop not in self.interrupted and stop[1] == epoch_idx and stop[0] in (None, model):
                    self.interrupted.append(stop)
                    raise KeyboardInterrupt  # as Ctrl-C in that epoch
            return real(trainer, train_data, epoch_idx, *args, **kwargs)

        monkeypatch.setattr(ResumableTrainer, "_train_epoch", recorded)

    def interrupt(self, epoch, model=None):
        """The next time epoch ``epoch`` of ``model`` (any model if None) begins, raise
        KeyboardInterrupt, once; ``interrupted`` lists the ``(model, epoch)`` stops that fired."""
        self._stops.append((model, epoch))

    def of(self, model, modalities=None):
        """The indices of the epochs ``model`` trained (with these active modalities)."""
        return [e.index for e in self if e.model == model and e.modalities == modalities]


@pytest.fixture
def epoch_log(monkeypatch):
    """The :class:`EpochLog` of this test's training runs."""
    return EpochLog(monkeypatch)


@pytest.fixture
def checkpoint_writes(monkeypatch):
    """Every checkpoint file the plugin writes (trainers, teacher caches, graph caches), in order."""
    import recbole_ckd.model  # noqa: F401  (every module that writes checkpoints, loaded)
    import recbole_ckd.quick_start  # noqa: F401
    from recbole_ckd import compat

    real, written = compat.save_checkpoint, []

    def recorded(state, path):
        written.append(os.path.abspath(os.fspath(path)))
        return real(state, path)

    for module in list(sys.modules.values()):
        ours = getattr(module, "__name__", "").startswith("recbole_ckd")
        if ours and getattr(module, "save_checkpoint", None) is real:
            monkeypatch.setattr(module, "save_checkpoint", recorded)
    return written


def pytest_configure(config):
    # RecBole 1.2.1's own deprecation noise (pandas chained fillna, torch.sparse, GradScaler)
    for line in (
        "ignore::FutureWarning:recbole.*",
        "ignore::DeprecationWarning:recbole.*",  # pandas 3's Pandas4Warning for RecBole's inplace=True
        "ignore:The given NumPy array is not writable:UserWarning",  # pandas 3: RecBole's read-only columns
        "ignore:torch.sparse.SparseTensor:UserWarning",
        "ignore:Sparse invariant checks:UserWarning",
        "ignore:Sparse CSR tensor support is in beta:UserWarning",
        "ignore::DeprecationWarning:ray.*",
        "ignore:pkg_resources is deprecated:UserWarning",  # ray 2.6's own import
        "ignore::DeprecationWarning:tensorboard.*",
    ):
        config.addinivalue_line("filterwarnings", line)
