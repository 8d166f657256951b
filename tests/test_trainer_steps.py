"The Trainer's parts: overridable steps, callbacks in `order`, cancel exceptions, and `on_train_end` even on failure."
import pytest
import torch

from deepminer.synthetic import make_synthetic_reid
from deepminer.train import (Callback, CancelBatch, CancelEpoch, CancelFit, ProgressBar, TrainConfig, Trainer,
                             TrainingDiverged)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return make_synthetic_reid(tmp_path_factory.mktemp("data") / "tiny", seed=0, train_ids=6, test_ids=4, cameras=3,
                               distractors=3, junk=2, progress=False)


def tiny_config(root, **changes) -> TrainConfig:
    settings = dict(dataset="synthetic", root=str(root), model=dict(backbone="resnet18"), height=64, width=32, P=3, K=2,
                    epochs=2, lr=1e-3, warmup_epochs=0, milestones=(), eval_every=0, device="cpu")
    return TrainConfig(**{**settings, **changes})


HOOKS = ("on_train_begin", "on_epoch_begin", "on_batch_begin", "on_batch_end", "on_epoch_end", "on_evaluate",
         "on_train_end")


class Record(Callback):
    "Appends (its name, the hook) to a shared list for every hook it sees."

    def __init__(self, name, events, order=0):
        self.name, self.events, self.order = name, events, order


for _hook in HOOKS:
    setattr(Record, _hook, lambda self, trainer, *args, hook=_hook: self.events.append((self.name, hook)))


def test_callbacks_run_in_order_around_each_stage(tiny_set):
    events = []
    trainer = Trainer(tiny_config(tiny_set, epochs=1), callbacks=[Record("late", events, 5), Record("early", events, -5)],
                      progress=False)
    trainer.fit()
    names = events
    assert names[:2] == [("early", "on_train_begin"), ("late", "on_train_begin")]
    assert names[-2:] == [("early", "on_train_end"), ("late", "on_train_end")]
    steps = trainer.step
    assert steps > 1
    assert names.count(("early", "on_batch_begin")) == names.count(("late", "on_batch_end")) == steps
    assert names.count(("late", "on_evaluate")) == 1           # the end of training


def test_a_progress_bar_is_a_callback_added_when_asked(tiny_set):
    assert not any(isinstance(c, ProgressBar) for c in Trainer(tiny_config(tiny_set), progress=False).callbacks)
    callbacks = Trainer(tiny_config(tiny_set), progress=True).callbacks
    assert isinstance(callbacks[0], ProgressBar)                # order -10: it opens its bar first


def test_cancel_batch_skips_the_step_cancel_epoch_ends_the_epoch_cancel_fit_ends_training(tiny_set):
    class SkipFirst(Callback):
        def on_batch_begin(self, trainer):
            if not getattr(self, "skipped", False):
                self.skipped = True
                raise CancelBatch

    class OneBatchPerEpoch(Callback):
        def on_batch_end(self, trainer, logs):
            raise CancelEpoch

    class StopInSecondEpoch(Callback):
        ended = False
        def on_epoch_begin(self, trainer):
            if trainer.epoch == 1:
                raise CancelFit
        def on_train_end(self, trainer):
            self.ended = True

    full = Trainer(tiny_config(tiny_set, epochs=1), progress=False)
    full.fit()
    skipped = Trainer(tiny_config(tiny_set, epochs=1), callbacks=[SkipFirst()], progress=False)
    skipped.fit()
    assert skipped.step == full.step - 1                       # one batch not trained on

    short = Trainer(tiny_config(tiny_set, epochs=2), callbacks=[OneBatchPerEpoch()], progress=False)
    short.fit()
    assert (short.epoch, short.step, len(short.history)) == (2, 2, 2)   # each epoch cut after its first batch, still logged

    stop = StopInSecondEpoch()
    cancelled = Trainer(tiny_config(tiny_set, epochs=3), callbacks=[stop], progress=False)
    cancelled.fit()
    assert cancelled.epoch == 1 and stop.ended


def test_on_train_end_runs_when_training_fails_and_divergence_names_the_step(tiny_set, tmp_path):
    class Poison(Callback):
        ended = False
        def on_batch_begin(self, trainer):
            if trainer.epoch == 1 and trainer.step == self.at:
                trainer.model.stem[0].weight.data.fill_(float("nan"))
        def on_train_end(self, trainer):
            self.ended = True

    poison = Poison()
    (tmp_path / "run").mkdir()
    trainer = Trainer(tiny_config(tiny_set, epochs=2), tmp_path / "run", callbacks=[poison], progress=False)
    steps_per_epoch = len(trainer.loaders.train)
    poison.at = steps_per_epoch + 1                              # the second batch of the second epoch
    with pytest.raises(TrainingDiverged, match=f"at epoch 2, step {steps_per_epoch + 2};"):
        trainer.fit()
    assert poison.ended
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 1   # the last good one


def test_the_steps_are_methods_a_subclass_can_override(tiny_set):
    class HalfLoss(Trainer):
        def forward_loss(self, images, pids):
            loss, terms = super().forward_loss(images, pids)
            self.seen_losses = getattr(self, "seen_losses", []) + [float(loss.detach())]
            return loss / 2, terms

    trainer = HalfLoss(tiny_config(tiny_set, epochs=1), progress=False)
    trainer.fit()
    assert len(trainer.seen_losses) == trainer.step
    assert trainer.history[0]["loss"] == pytest.approx(sum(trainer.seen_losses) / len(trainer.seen_losses) / 2, rel=1e-4)
