"""The plugin's checkpoint format (tensors and plain metadata, atomic, loaded ``weights_only``)
and the random states a resumable stage saves and restores."""

import random

import numpy as np
import torch
from recbole.utils import set_color

from recbole_ckd.compat import CheckpointError, load_checkpoint, save_checkpoint
from recbole_ckd.run_keys import RUN_KEY_LENGTH, config_key


class SafeCheckpointMixin:
    """Checkpoints in the plugin's format: tensors and plain metadata, atomic, ``weights_only``.

    RecBole pickles its Config into every checkpoint and loads it back with a plain
    ``torch.load``, which torch >= 2.6 refuses; this replaces both ends for any RecBole trainer.
    Every checkpoint records the model and the run key it belongs to, and is loaded only by
    that run (a file copied from another stage or setting is unusable, not silently reused).
    """

    run_key = None  # the key of the run's folder; a trainer whose folder has a narrower key sets it

    def checkpoint_identity(self):
        if self.run_key is None:
            self.run_key = config_key(self.config)
        return {"model": self.config["model"], "run_key": self.run_key}

    def load_own_checkpoint(self, path, map_location="cpu"):
        """The checkpoint at ``path`` if it belongs to this run, else a CheckpointError.

        Files written before checkpoints recorded their run key are accepted on the model alone:
        they sit in a folder named after that key, where only their own run wrote them."""
        state = load_checkpoint(path, map_location=map_location)
        own = self.checkpoint_identity()
        if state.get("model") != own["model"] or state.get("run_key", own["run_key"]) != own["run_key"]:
            theirs = f"{state.get('model')} run {str(state.get('run_key', '?'))[:RUN_KEY_LENGTH]}"
            raise CheckpointError(f"{path} belongs to another run ({theirs}), not to this {own['model']} run "
                                  f"{own['run_key'][:RUN_KEY_LENGTH]}; delete it to start over.")
        return state

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            **self.checkpoint_identity(),
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        save_checkpoint(state, saved_model_file)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def _load_model_state(self, checkpoint_file):
        state = self.load_own_checkpoint(checkpoint_file, map_location=self.device)
        self.model.load_state_dict(state["state_dict"])
        return state

    def resume_checkpoint(self, resume_file):
        resume_file = str(resume_file)
        self.saved_model_file = resume_file
        state = self._load_model_state(resume_file)
        self.start_epoch = state["epoch"] + 1
        self.cur_step = state["cur_step"]
        self.best_valid_score = state["best_valid_score"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            self._load_model_state(checkpoint_file)
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)


# ----------------------------------------------------------------------------- RNG state
def rng_state(generator):
    """Every random state a stage depends on: torch, numpy, Python, the loader's generator, CUDA."""
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        "loader": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state, generator):
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    internal, version, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_stage(seed, train_data):
    """Seed every random source at the start of a stage, so a stage's result does not depend
    on what ran before it (e.g. whether its teachers came from the cache)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    train_data.generator.manual_seed(seed)
