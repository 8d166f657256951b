"deepminer.widgets: the τ explorer's slider, the live dashboard during real (tiny) training runs, background training."
import hashlib
import threading
import time

import pytest
import torch
from hypothesis import given, settings, strategies as st
from matplotlib import pyplot as plt
from PIL import Image

from deepminer.data import SyntheticMarket, build_transforms
from deepminer.model import DeepMiner
from deepminer.synthetic import make_synthetic_reid
from deepminer.train import Callback, TrainConfig, Trainer
from deepminer.visualize import inspect_eval
from deepminer.widgets import BackgroundTraining, LiveDashboard, TauExplorer, in_jupyter

H, W = 64, 32


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_synthetic_reid(tmp_path_factory.mktemp("widgets") / "synthetic", train_ids=4, test_ids=4, cameras=2,
                               distractors=2, junk=0, progress=False)


@pytest.fixture(scope="module")
def probe(root):
    transform = build_transforms(H, W, train=False)
    return torch.stack([transform(Image.open(r.path).convert("RGB")) for r in SyntheticMarket(root).query[:3]])


def tiny_config(root, epochs=1):
    return TrainConfig(dataset="synthetic", root=str(root), model=dict(backbone="resnet18"), height=H, width=W, P=4, K=2,
                       epochs=epochs, lr=1e-3, warmup_epochs=1, warmup_start_lr=1e-4, milestones=(), eval_every=0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DeepMiner(4, backbone="resnet18").eval()


@pytest.fixture
def explorer(model, probe):
    return TauExplorer(model, probe)


def digest(views):
    return [hashlib.sha1(v.value).hexdigest() for v in views]


def test_setting_the_slider_changes_the_shown_mask_and_erased_images(explorer):
    explorer.slider.value = 1.0
    masks, erased, labels = digest(explorer.mask_views), digest(explorer.erased_views), [l.value for l in explorer.fraction_labels]
    assert labels == ["erased 0%"] * 3
    explorer.slider.value = 0.3
    assert all(a != b for a, b in zip(digest(explorer.mask_views), masks))
    assert all(a != b for a, b in zip(digest(explorer.erased_views), erased))
    assert all(l.value != "erased 0%" for l in explorer.fraction_labels)
    images = digest(explorer.image_views)
    explorer.block_selector.value = 1
    assert digest(explorer.image_views) == images  # the pictures themselves never change


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([1, 2, 3]), st.lists(st.integers(0, 20), min_size=2, max_size=8))
def test_the_erased_fraction_never_decreases_as_tau_decreases(model, probe, block, steps):
    explorer = _shared_explorer(model, probe)
    explorer.block_selector.value = block
    fractions = []
    for tau in sorted({s / 20 for s in steps}, reverse=True):
        explorer.slider.value = tau
        fractions.append(explorer.erased_fractions())
    for higher_tau, lower_tau in zip(fractions, fractions[1:]):
        assert all(a <= b for a, b in zip(higher_tau, lower_tau))


_explorers = {}


def _shared_explorer(model, probe):
    "One explorer for all hypothesis examples (fixtures are not reset between them)."
    return _explorers.setdefault(id(model), TauExplorer(model, probe))


def test_slider_and_block_moves_run_no_forward_pass(explorer, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a slider move ran the network")
    monkeypatch.setattr(DeepMiner, "inspect", forbidden)
    monkeypatch.setattr(DeepMiner, "forward", forbidden)
    for block in (1, 2, 3):
        explorer.block_selector.value = block
        for tau in (0.0, 0.45, 0.9):
            explorer.slider.value = tau


def test_explorer_masks_are_the_models_masks(model, probe, explorer):
    inspection = inspect_eval(model, probe)
    for k, branch in enumerate(model.ie_branches, start=1):
        explorer.block_selector.value = branch.position
        explorer.slider.value = branch.ero.tau
        assert torch.equal(explorer.masks(), inspection.erase_masks[f"ie{k}"])


def test_apply_sets_the_models_tau_and_errors_name_the_argument(probe):
    model = DeepMiner(4, backbone="resnet18", ie_after=(3,))
    explorer = TauExplorer(model, probe)
    assert explorer.block == 3
    explorer.slider.value = 0.35
    explorer.apply_button.click()
    assert model.ie_branches[0].ero.tau == 0.35
    explorer.block_selector.value = 2
    assert explorer.apply_button.disabled
    with pytest.raises(ValueError, match="no IE branch after B2"):
        explorer.apply()
    with pytest.raises(ValueError, match="block must be one of"):
        TauExplorer(model, probe, block=0)
    with pytest.raises(ValueError, match="tau must lie in"):
        TauExplorer(model, probe, tau=-0.5)


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_explorer_still_picture_has_a_column_per_image(explorer, tau):
    explorer.slider.value = tau  # at τ = 1 every image is "erased 0%": the columns must not merge
    fig = explorer.figure()
    assert len(fig.axes) == 4 * 3  # rows image, activation, mask, erased; one column per image


class Spy(Callback):
    "Records what the dashboard's widgets hold after each step (runs after the dashboard)."

    def __init__(self, dashboard):
        self.dashboard, self.seen = dashboard, []

    def on_batch_end(self, trainer, logs):
        d = self.dashboard
        self.seen.append((trainer.step, d.updates, hashlib.sha1(d.curves.value).hexdigest(), d.maps.value[:2], d.status.value))


def test_live_dashboard_updates_its_widgets_during_a_training_run(root, probe):
    open_figures = plt.get_fignums()
    dashboard = LiveDashboard(probe, every=1, widgets=True)
    spy = Spy(dashboard)
    trainer = Trainer(tiny_config(root), callbacks=[dashboard, spy], progress=False)
    trainer.fit()
    steps = trainer.step
    assert steps >= 2
    assert [s[0] for s in spy.seen] == list(range(1, steps + 1))
    assert [s[1] for s in spy.seen] == list(range(1, steps + 1))          # one update per step, while training
    assert len({s[2] for s in spy.seen}) == steps                         # the loss curves changed every time
    assert all(s[3] == b"\xff\xd8" for s in spy.seen)                     # Figure 2 as a JPEG
    assert f"step {steps} " in dashboard.status.value
    assert list(dashboard.losses) == ["total", "global", "ie1", "ie2", "local"]
    assert trainer.model.training
    assert plt.get_fignums() == open_figures                              # no figure leaked to pyplot


def test_live_dashboard_logs_outside_jupyter(root, probe, capsys):
    assert not in_jupyter()
    dashboard = LiveDashboard(probe, every=2)
    assert not dashboard.use_widgets and not hasattr(dashboard, "widget")
    trainer = Trainer(tiny_config(root), callbacks=[dashboard], progress=False)
    trainer.fit()
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == dashboard.updates == trainer.step // 2 + trainer.step % 2
    assert lines[-1].startswith(f"step {trainer.step} (epoch 1/1) lr ") and "ie2 " in lines[-1]


def test_background_training_pauses_resumes_and_the_slider_stays_live(root, probe):
    dashboard = LiveDashboard(probe, every=1, widgets=True)
    run = BackgroundTraining()
    trainer = Trainer(tiny_config(root, epochs=3), callbacks=[dashboard, run], progress=False)
    assert run.state == "not started" and run.pause_button.disabled
    run.start(trainer.fit)
    assert run.thread.is_alive() and threading.current_thread() is not run.thread
    explorer = TauExplorer(trainer.model, probe)  # inspects a copy of the model that is training
    moved = []
    for tau in (0.1, 0.6):
        before = digest(explorer.mask_views)
        start = time.perf_counter()
        explorer.slider.value = tau
        moved.append((run.state, time.perf_counter() - start, digest(explorer.mask_views) != before))
    assert all(changed for _, _, changed in moved)
    run.pause_button.click()
    deadline = time.monotonic() + 120
    while run.state != "paused" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.state == "paused" and run.pause_button.description == "resume"
    held = trainer.step
    explorer.slider.value = 0.95  # the kernel thread answers while the run is held
    time.sleep(0.5)
    assert trainer.step == held
    run.pause_button.click()
    result = run.join(timeout=300)
    assert run.state == "finished" and trainer.epoch == 3 and set(result) >= {"mAP", "rank1"}
    assert run.pause_button.disabled and "finished" in run.state_label.value
    assert trainer.model.training  # nobody switched the training model to eval mode from outside
    assert moved[0][0] == "running"


def test_background_training_stop_and_errors(root):
    run = BackgroundTraining()
    trainer = Trainer(tiny_config(root, epochs=5), callbacks=[run], progress=False)
    run.start(trainer.fit)
    run.stop()
    assert run.join(timeout=120) is None
    assert run.state == "stopped" and trainer.step <= 1
    with pytest.raises(RuntimeError, match="started already"):
        run.start(trainer.fit)

    def broken():
        raise ValueError("no data")
    failing = BackgroundTraining().start(broken)
    with pytest.raises(ValueError, match="no data"):
        failing.join(timeout=10)
    assert failing.state == "failed"
    with pytest.raises(RuntimeError, match="not started"):
        BackgroundTraining().join()
    blocked = BackgroundTraining().start(lambda: time.sleep(2))
    with pytest.raises(TimeoutError, match="still running"):
        blocked.join(timeout=0.01)
    blocked.join()
