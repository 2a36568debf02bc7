"""Trainers: RecBole's training loop extended through its hooks (safe checkpoints, resume, the
learning-rate schedule), and the two CKD stages (teachers, then the student)."""

import copy
import itertools
import os
import shutil

import torch
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_ckd.checkpoints import SafeCheckpointMixin, restore_rng_state, rng_state, seed_stage
from recbole_ckd.compat import CheckpointError, save_checkpoint
from recbole_ckd.errors import ConfigError, UserError
from recbole_ckd.run_keys import default_run_dir, file_lock, teacher_key, teacher_run_dir


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or Inf."""


_SAFE_TRAINERS = {}


def with_safe_checkpoints(trainer_class):
    """``trainer_class`` with the plugin's checkpoint format (one subclass per class)."""
    if trainer_class is Trainer:
        return ResumableTrainer
    if issubclass(trainer_class, SafeCheckpointMixin):
        return trainer_class
    if trainer_class not in _SAFE_TRAINERS:
        bases = (SafeCheckpointMixin, OwnLoopMixin, trainer_class)
        _SAFE_TRAINERS[trainer_class] = type(trainer_class.__name__, bases, {})
    return _SAFE_TRAINERS[trainer_class]


class OwnLoopMixin:
    """A RecBole trainer with a training loop of its own (KG, pre-training, VAE...): Mirror
    Gradient lives in the plugin's loop (:class:`ResumableTrainer`), which such a trainer skips."""

    def __init__(self, config, model):
        if config["mg"]:
            raise ConfigError(
                f"config key mg: True is not supported for {config['model']}: it trains with RecBole's "
                f"{type(self).__name__}, whose own training loop has no Mirror Gradient; set mg: False."
            )
        super().__init__(config, model)


# ----------------------------------------------------------------------------- Mirror Gradient
def mirror_gradient(loss_func, optimizer, alpha1, alpha2, beta):
    """``loss_func`` with Mirror Gradient (Zhong et al., WWW 2024) in MMRec's form, for one epoch.

    On batches 0, beta, 2 beta, ... of the epoch it takes a step along ``alpha1 x`` the gradient
    of the loss itself, then recomputes the loss on the same batch at the new parameters and
    returns what makes RecBole's loop step along ``-alpha2 x`` that loss's gradient (with its
    gradient clipping, which MMRec also applies to the second step only). The value returned is
    the first loss, which RecBole logs (as MMRec does); other batches are untouched.
    """
    batches = itertools.count()

    def mirrored_loss(interaction):
        losses = loss_func(interaction)
        if next(batches) % beta:
            return losses
        first = sum(losses) if isinstance(losses, tuple) else losses
        if torch.isfinite(first):  # a bad loss is reported by RecBole's check of the returned value
            (alpha1 * first).backward()
            optimizer.step()
            optimizer.zero_grad()
        second = loss_func(interaction)
        second = -alpha2 * (sum(second) if isinstance(second, tuple) else second)
        gradient_only = second - second.detach()  # value 0 (NaN if the loss is), the second step's gradient
        if isinstance(losses, tuple):
            return (losses[0].detach() + gradient_only, *(part.detach() for part in losses[1:]))
        return losses.detach() + gradient_only

    return mirrored_loss


# ----------------------------------------------------------------------------- learning-rate schedule
def learning_rate_schedule(optimizer, setting):
    """MMRec's ``learning_rate_scheduler: [a, b]``: the learning rate of epoch ``e`` is
    ``learning_rate * a^(e / b)`` (stepped after every training epoch); None for ``~``. The
    Config has checked the setting."""
    if setting is None:
        return None
    factor, period = (float(x) for x in setting)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: factor ** (epoch / period))


# ----------------------------------------------------------------------------- optimizer
def multi_tensor_update(optimizer):
    """``optimizer`` (Adam or AdamW) set to PyTorch's multi-tensor ("foreach") update where it is
    left to PyTorch's default, which on CPU is a loop over the parameters: the same arithmetic,
    bit for bit (tests/test_pinned_values.py checks it), about 3x faster over a large fine-tuned
    feature table (FREEDOM's and BM3's 7,050 x 4,096 at Baby's shape)."""
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        for group in optimizer.param_groups:
            if group.get("foreach") is None and not group.get("fused"):
                group["foreach"] = True
    return optimizer


# ----------------------------------------------------------------------------- resumable stage
class ResumableTrainer(SafeCheckpointMixin, Trainer):
    """RecBole's training loop with a checkpoint per validation, so Ctrl-C loses nothing.

    A stage lives in ``run_dir``: ``best.pth`` (the selected model), ``last.pth`` (model,
    optimizer, counters and every random state after the last validation). Started again on
    the same config, it resumes from ``last.pth``; a finished stage is not trained again.
    """

    def __init__(self, config, model, run_dir=None, run_key=None):
        super().__init__(config, model)
        self.run_dir = run_dir or default_run_dir(config)
        self.run_key = run_key  # None: the run's own config_key (a teacher's is narrower)
        self.saved_model_file = os.path.join(self.run_dir, "best.pth")
        self.best_valid_result = None
        self.finished = False
        self.epoch_stats = []  # what the model measured per epoch (CKD: loss terms, weights r_m)
        self._epoch = None
        self._validating, self._train_data = True, None
        self.lr_scheduler = learning_rate_schedule(self.optimizer, config["learning_rate_scheduler"])

    def _build_optimizer(self, **kwargs):
        return multi_tensor_update(super()._build_optimizer(**kwargs))

    @property
    def last_file(self):
        return os.path.join(self.run_dir, "last.pth")

    def _save_last(self, epoch, train_data):
        state = {
            **self.checkpoint_identity(),
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "best_valid_result": {k: float(v) for k, v in (self.best_valid_result or {}).items()},
            "finished": self.finished,
            "epoch_stats": self.epoch_stats,
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(train_data.generator),
        }
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler.state_dict()
        save_checkpoint(state, self.last_file)

    def _try_resume(self, train_data):
        if not (self.config["resume"] and os.path.isfile(self.last_file)):
            return False
        try:
            # on the CPU: the random states must stay there; load_state_dict moves the rest
            state = self.load_own_checkpoint(self.last_file)
            # the model that last.pth's counters select must be readable too, or the stage is lost
            self.load_own_checkpoint(self.saved_model_file)
        except (CheckpointError, FileNotFoundError) as err:
            reason = err if isinstance(err, CheckpointError) else f"{err.filename} is missing"
            self.logger.warning(f"{self.config['model']}: unusable checkpoint in {self.run_dir} ({reason}); "
                                "training this stage again from scratch (other stages are kept).")
            return False
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        multi_tensor_update(self.optimizer)  # a checkpoint of older code left it to PyTorch's default
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        restore_rng_state(state["rng"], train_data.generator)
        self.start_epoch = state["epoch"] + 1
        self.cur_step = state["cur_step"]
        self.best_valid_score = state["best_valid_score"]
        self.best_valid_result = state["best_valid_result"] or None
        self.finished = state["finished"]
        self.epoch_stats = state.get("epoch_stats", [])
        what = "finished; reusing it" if self.finished else f"resuming at epoch {self.start_epoch}"
        self.logger.info(set_color(f"{self.config['model']}: found {self.last_file}, {what}", "green"))
        return True

    def _check_nan(self, loss):
        if torch.isfinite(loss):
            return
        terms = getattr(self.model, "last_loss_terms", None) or {"loss": loss}
        bad = [name for name, value in terms.items() if not torch.isfinite(value).all()] or ["loss"]
        last = self.last_file if os.path.isfile(self.last_file) else "none yet"
        raise NonFiniteLossError(
            f"{self.config['model']}: the training loss became {loss.item()} in epoch {self._epoch} "
            f"(bad term: {', '.join(bad)}). Last good checkpoint: {last}. Lower the learning rate or check the data."
        )

    def _log_epoch_stats(self, epoch_idx):
        """Log what the model measured during the epoch (CKD: loss terms and weights r_m)."""
        pop = getattr(self.model, "pop_epoch_stats", None)
        stats = pop() if pop else {}
        if stats:
            self.logger.info(
                set_color(f"epoch {epoch_idx} stats", "green") + ": " + ", ".join(f"{k}: {v:.4f}" for k, v in stats.items())
            )
            for name, value in stats.items():
                self.tensorboard.add_scalar(f"Train/{name}", value, epoch_idx)
            self.epoch_stats.append({"epoch": epoch_idx, **stats})
        return stats

    def mode_results(self, valid_data, test_data, load_best_model=True):
        """Validation and test metrics of a multimodal model jointly and in each "only m" mode
        (the evidence for or against "1 + 1 < 2")."""
        if load_best_model:
            self._load_model_state(self.saved_model_file)
        results = {}
        for name, masked in self._report_modes().items():
            with self.model.masked_as(masked):
                results[name] = {
                    "valid": dict(self.evaluate(valid_data, load_best_model=False)),
                    "test": dict(self.evaluate(test_data, load_best_model=False)),
                }
        return results

    def _report_modes(self):
        modalities = getattr(self.model, "modalities", ())
        if not modalities or self.model.default_masked or not self.model.ranks_with_modalities:
            return {}
        return {"joint": frozenset(), **{f"only_{m}": self.model.only(m) for m in modalities}}

    def checkpoint_dirs(self):
        return {"run": self.run_dir}

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """RecBole's own loop (dynamic negative sampling, W&B, hyper-parameter logging included),
        resumed from ``last.pth`` or seeded, extended through its hooks: ``_train_epoch`` (the
        model's ``pre_epoch``, the learning-rate schedule, the epoch statistics) and the
        per-validation callback (``last.pth``). The TensorBoard writer is closed when it returns or raises,
        so no writer thread outlives the run (it writes to a relative folder)."""
        try:
            return self._resume_and_fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        finally:
            self.tensorboard.close()

    def _resume_and_fit(self, train_data, valid_data, verbose, saved, show_progress, callback_fn):
        if not (saved and self._try_resume(train_data)):
            seed_stage(self.config["seed"], train_data)
        if self.finished:
            return self.best_valid_score, self.best_valid_result
        self._train_data = train_data
        self._validating = bool(valid_data) and self.eval_step > 0

        def after_validation(epoch_idx, valid_score):
            if saved:  # RecBole has updated the counters and written best.pth if it improved
                self._save_last(epoch_idx, train_data)
            if callback_fn:
                callback_fn(epoch_idx, valid_score)

        result = super().fit(train_data, valid_data, verbose, saved, show_progress, after_validation)
        self.finished = True  # stopped early or ran every epoch (an interruption raises instead)
        if saved:
            self._save_last(self._epoch if self._epoch is not None else self.epochs - 1, train_data)
        return result

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self._epoch = epoch_idx
        if hasattr(self.model, "pre_epoch"):  # e.g. FREEDOM re-samples its pruned graph
            self.model.pre_epoch(epoch_idx)
        if self.config["mg"]:  # no state across epochs: MMRec counts the batches of each epoch from 0
            loss_func = mirror_gradient(loss_func or self.model.calculate_loss, self.optimizer,
                                        self.config["alpha1"], self.config["alpha2"], self.config["beta"])
        loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self._log_epoch_stats(epoch_idx)
        return loss

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        super()._save_checkpoint(epoch, verbose=verbose, **kwargs)
        if not self._validating and epoch >= 0:  # nothing to select on: every epoch is the last one kept
            self._save_last(epoch, self._train_data)


# ----------------------------------------------------------------------------- CKD, two stages
class CKDTrainer(ResumableTrainer):
    """Stage 1: one uni-modal teacher per modality (cached); stage 2: the CKD student.

    A teacher is the backbone trained with BPR in its "only m" mode (``active_modalities:
    [m]``), selected in that mode. It is cached under
    ``<checkpoint_dir>/<dataset>/teachers/<Backbone>-<m>-<key>``, where the key covers the
    dataset files and every config key except the student-only ones; a changed key trains a
    new teacher, ``retrain_teachers: True`` forces it. Frozen teacher tables are computed once
    for stage 2.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.teacher_trainers = {}
        self.teacher_origins = {}  # modality -> "trained" (started by this run) or "cached" (found in its folder)
        self.backbone_trainer = None

    def teacher_config(self, modality):
        config = copy.deepcopy(self.config)
        config["model"] = self.model.backbone.__name__
        config["active_modalities"] = [modality]
        config["resume"] = True  # the cache is shared: only retrain_teachers rebuilds a teacher
        config["learning_rate"] = self.config["teacher_learning_rate"] or self.config["learning_rate"]
        if self.config["teacher_reg_weight"] is not None and "reg_weight" in config:
            config["reg_weight"] = self.config["teacher_reg_weight"]
        return config

    def _train_teacher(self, modality, train_data, valid_data, verbose, show_progress):
        config = self.teacher_config(modality)
        run_dir = teacher_run_dir(config, modality)
        with file_lock(run_dir + ".lock"):  # concurrent sweep trials train a teacher once
            if self.config["retrain_teachers"] and os.path.isdir(run_dir):
                self.logger.info(f"retrain_teachers: removing {run_dir}")
                shutil.rmtree(run_dir)
            return self._train_or_load_teacher(modality, config, run_dir, train_data, valid_data, verbose, show_progress)

    def _train_or_load_teacher(self, modality, config, run_dir, train_data, valid_data, verbose, show_progress):
        seed_stage(config["seed"], train_data)  # the same teacher whatever ran before
        teacher = self.model.backbone(config, train_data.dataset).to(config["device"])
        trainer = ResumableTrainer(config, teacher, run_dir, teacher_key(config))  # retrains an unreadable cache itself
        self.teacher_origins[modality] = "cached" if os.path.isfile(trainer.last_file) else "trained"
        if self.teacher_origins[modality] == "cached":
            self.logger.info(set_color(f"Teacher '{modality}': cache {run_dir}", "green"))
        else:
            self.logger.info(set_color(f"Teacher '{modality}': training ({run_dir})", "green"))
        trainer.fit(train_data, valid_data, verbose=verbose, saved=True, show_progress=show_progress)
        trainer._load_model_state(trainer.saved_model_file)
        return trainer

    def prepare_teachers(self, train_data, valid_data, verbose=True, show_progress=False):
        """Stage 1: every teacher trained, or taken from the cache."""
        for modality in self.model.modalities:
            self.teacher_trainers[modality] = self._train_teacher(modality, train_data, valid_data, verbose, show_progress)
        return self.teacher_trainers

    def _plain_backbone(self, train_data):
        """The trainer of a plain run of the backbone under the same config, if one finished."""
        config = copy.deepcopy(self.config)
        config["model"] = self.model.backbone.__name__
        run_dir = default_run_dir(config)
        if not os.path.isfile(os.path.join(run_dir, "last.pth")):
            return None
        trainer = ResumableTrainer(config, self.model.backbone(config, train_data.dataset).to(config["device"]), run_dir)
        try:
            if not trainer.load_own_checkpoint(trainer.last_file)["finished"]:
                return None  # still running, or interrupted: nothing to compare with yet
            trainer._load_model_state(trainer.saved_model_file)
        except (CheckpointError, FileNotFoundError) as err:
            reason = err if isinstance(err, CheckpointError) else f"{err.filename} is missing"
            self.logger.warning(f"Plain {config['model']} run in {run_dir} is unusable ({reason}); not reported.")
            return None
        trainer.eval_collector.data_collect(train_data)
        return trainer

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self.backbone_trainer = self._plain_backbone(train_data)
        tables = {}
        for modality, trainer in self.prepare_teachers(train_data, valid_data, verbose, show_progress).items():
            teacher = trainer.model.eval().requires_grad_(False)
            teacher.zero_grad(set_to_none=True)
            with torch.no_grad():
                tables[modality] = teacher.forward(teacher.default_masked)
        self.model.set_teacher_tables(tables)
        self.logger.info(set_color("Stage 2: the CKD student", "green") + f" ({self.run_dir})")
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def mode_results(self, valid_data, test_data, load_best_model=True):
        """Validation and test metrics of the student in each mode and of every teacher."""
        student = super().mode_results(valid_data, test_data, load_best_model)
        results = {f"student {name}": value for name, value in student.items()}
        for modality, trainer in self.teacher_trainers.items():
            results[f"teacher {modality}"] = {
                "valid": dict(trainer.evaluate(valid_data, load_best_model=False)),
                "test": dict(trainer.evaluate(test_data, load_best_model=False)),
            }
        if self.backbone_trainer is not None:  # a plain run of the backbone under the same config
            plain = self.backbone_trainer.mode_results(valid_data, test_data, load_best_model=False)
            results.update({f"backbone {name}": value for name, value in plain.items()})
        return results

    def checkpoint_dirs(self):
        dirs = {"student": self.run_dir, **{f"teacher {m}": t.run_dir for m, t in self.teacher_trainers.items()}}
        if self.backbone_trainer is not None:
            dirs["backbone"] = self.backbone_trainer.run_dir
        return dirs
