"""Trainers: RecBole's training loop with checkpoints that load safely on any torch."""

from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_ckd.compat import load_checkpoint, save_checkpoint


class SafeCheckpointMixin:
    """Checkpoints in the plugin's format: tensors and plain metadata, atomic, ``weights_only``.

    RecBole pickles its Config into every checkpoint and loads it back with a plain
    ``torch.load``, which torch >= 2.6 refuses; this replaces both ends for any RecBole trainer.
    """

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "model": self.config["model"],
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
        state = load_checkpoint(checkpoint_file, map_location=self.device)
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


_SAFE_TRAINERS = {}


def with_safe_checkpoints(trainer_class):
    """``trainer_class`` with the plugin's checkpoint format (one subclass per class)."""
    if issubclass(trainer_class, SafeCheckpointMixin):
        return trainer_class
    if trainer_class not in _SAFE_TRAINERS:
        _SAFE_TRAINERS[trainer_class] = type(trainer_class.__name__, (SafeCheckpointMixin, trainer_class), {})
    return _SAFE_TRAINERS[trainer_class]


class MultimodalTrainer(SafeCheckpointMixin, Trainer):
    """The trainer of the plugin's multimodal backbones."""
