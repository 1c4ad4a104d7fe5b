"""Learning-rate schedules of the VAE loop: the closed forms, the rates a run uses, exact resume."""

import json
import math

import pyro
import pyro.optim
import pytest
import torch

from pyro_vi import TrainConfig, VAE, load_dataset
from pyro_vi import cli
from pyro_vi.errors import CheckpointError, ConfigError
from pyro_vi.vae import train
from pyro_vi.vae.train import fit

STEPS_PER_EPOCH = 14  # digits: 1,347 training images in batches of 100


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _params():
    return {name: value.detach().clone() for name, value in pyro.get_param_store().items()}


def _vae(init_seed=123):
    pyro.clear_param_store()
    torch.manual_seed(init_seed)
    return VAE(64, z_dim=4, hidden_dims=(32,))


def _cosine(step, num_steps, start, final):
    return final + (start - final) * (1 + math.cos(math.pi * min(step / num_steps, 1.0))) / 2


@pytest.mark.parametrize("step", [0, 1, 50, 99, 100, 150])
def test_schedule_factors_follow_their_closed_forms(step):
    num_steps = 100
    cosine = TrainConfig(learning_rate=2e-3, lr_schedule="cosine", final_learning_rate=5e-4)
    assert cosine.learning_rate_factor(step, num_steps) * 2e-3 == pytest.approx(_cosine(step, num_steps, 2e-3, 5e-4), rel=1e-12)
    exponential = TrainConfig(learning_rate=1e-2, lr_schedule="exponential", final_learning_rate=1e-4)
    # 1e-2 down to 1e-4: a factor 10 every half of the run, then constant.
    assert exponential.learning_rate_factor(step, num_steps) == pytest.approx(10.0 ** (-2 * min(step, 100) / 100), rel=1e-12)
    assert TrainConfig().learning_rate_factor(step, num_steps) == 1.0


def test_the_cosine_ends_where_it_should():
    config = TrainConfig(learning_rate=1e-3, lr_schedule="cosine")
    assert config.learning_rate_factor(0, 10) == 1.0
    assert config.learning_rate_factor(5, 10) == pytest.approx(0.5, abs=1e-15)
    assert config.learning_rate_factor(10, 10) == pytest.approx(0.0, abs=1e-15)


def test_a_scheduled_run_sets_each_steps_learning_rate(digits, monkeypatch):
    made = []

    def capture(config, num_steps, device):
        made.append(train._default_optimizer.__wrapped__(config, num_steps, device))
        return made[-1]

    capture.__wrapped__ = train._default_optimizer
    monkeypatch.setattr(train, "_default_optimizer", capture)
    config = TrainConfig(epochs=3, batch_size=100, learning_rate=3e-3, lr_schedule="cosine", final_learning_rate=1e-4, seed=0)
    rates = []

    def evaluate(epoch):  # after epoch e, the next step's rate is set: step e * 14 of 42
        optimizer = made[0]
        assert isinstance(optimizer, pyro.optim.PyroLRScheduler)
        rates.append({scheduler.optimizer.param_groups[0]["lr"] for scheduler in optimizer.optim_objs.values()})
        return {}

    vae = _vae()
    fit(vae.model, vae.guide, digits.train_images, config, evaluate=evaluate, progress=False)
    num_steps = 3 * STEPS_PER_EPOCH
    assert len(made[0].optim_objs) == len(list(vae.parameters()))  # every network parameter is scheduled
    for epoch, seen in enumerate(rates, start=1):
        assert len(seen) == 1  # all parameters share the rate
        assert seen.pop() == pytest.approx(_cosine(epoch * STEPS_PER_EPOCH, num_steps, 3e-3, 1e-4), rel=1e-12)
    assert _cosine(num_steps, num_steps, 3e-3, 1e-4) == pytest.approx(1e-4)  # the last rate set is the final one


def test_a_constant_rate_keeps_the_fused_adam_and_the_old_checkpoint_keys():
    config = TrainConfig(learning_rate=1e-3)
    assert not isinstance(train._default_optimizer(config, 10, torch.device("cpu")), pyro.optim.PyroLRScheduler)
    # Checkpoints written before schedules existed hold exactly the old keys: they still resume.
    assert "lr_schedule" not in config.checkpoint_config() and "final_learning_rate" not in config.checkpoint_config()
    scheduled = TrainConfig(epochs=7, lr_schedule="cosine").checkpoint_config()
    assert (scheduled["lr_schedule"], scheduled["lr_schedule_epochs"]) == ("cosine", 7)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("schedule,final", [("cosine", 0.0), ("exponential", 1e-4)])
def test_a_resumed_scheduled_run_equals_an_uninterrupted_one(digits, tmp_path, schedule, final, compile):
    # A checkpoint every 5 steps; the run crashes at the end of epoch 2 (step 28, before that
    # step's checkpoint), so it resumes from the one after step 25, mid-epoch: the scheduler's step
    # count and rates must come back with it.
    config = TrainConfig(epochs=3, batch_size=100, learning_rate=5e-3, lr_schedule=schedule, final_learning_rate=final,
                         checkpoint_every_steps=5, seed=4, compile=compile)
    vae = _vae()
    fit(vae.model, vae.guide, digits.train_images, config, checkpoint_path=tmp_path / "full.pt", progress=False)
    uninterrupted = _params()

    def crash_after_epoch_2(epoch):
        if epoch == 2:
            raise _Crash
        return {}

    vae = _vae()
    with pytest.raises(_Crash):
        fit(vae.model, vae.guide, digits.train_images, config, evaluate=crash_after_epoch_2,
            checkpoint_path=tmp_path / "part.pt", progress=False)
    assert torch.load(tmp_path / "part.pt", weights_only=False)["run"]["step"] == 25

    vae = _vae(init_seed=999)  # another initial network: everything must come from the checkpoint
    result = fit(vae.model, vae.guide, digits.train_images, config, checkpoint_path=tmp_path / "part.pt", resume=True,
                 progress=False)
    resumed = _params()
    assert set(resumed) == set(uninterrupted)
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), name
    assert [h["epoch"] for h in result.history] == [1, 2, 3]


def test_resuming_a_scheduled_run_with_other_epochs_is_refused(digits, tmp_path):
    config = TrainConfig(epochs=1, batch_size=100, lr_schedule="cosine")
    vae = _vae()
    fit(vae.model, vae.guide, digits.train_images, config, checkpoint_path=tmp_path / "run.pt", progress=False)
    vae = _vae()
    longer = TrainConfig(epochs=2, batch_size=100, lr_schedule="cosine")
    with pytest.raises(CheckpointError, match="lr_schedule_epochs: 1 in the checkpoint, 2 now"):
        fit(vae.model, vae.guide, digits.train_images, longer, checkpoint_path=tmp_path / "run.pt", resume=True, progress=False)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"lr_schedule": "step"}, "unknown learning-rate schedule 'step'; choose one of constant, cosine, exponential"),
        ({"final_learning_rate": 1e-4}, "a final learning rate (0.0001) needs a schedule"),
        ({"lr_schedule": "cosine", "final_learning_rate": 2e-3}, "final learning rate must be from 0 to the learning rate 0.001"),
        ({"lr_schedule": "cosine", "final_learning_rate": -1e-4}, "final learning rate must be from 0"),
        ({"lr_schedule": "cosine", "final_learning_rate": math.nan}, "final learning rate must be from 0"),
        ({"lr_schedule": "cosine", "final_learning_rate": "0"}, "final learning rate must be a number"),
        ({"lr_schedule": "exponential"}, "an exponential decay never reaches 0: give a positive final learning rate"),
    ],
    ids=["unknown", "final-without-schedule", "final-above-start", "negative", "nan", "string", "exponential-to-zero"],
)
def test_bad_schedule_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
        TrainConfig(learning_rate=1e-3, **options).validate(num_data=1000)
    assert "\n" not in str(raised.value)


def test_an_optimizer_and_a_schedule_together_are_refused(digits):
    vae = _vae()
    config = TrainConfig(epochs=1, batch_size=100, lr_schedule="cosine")
    with pytest.raises(ConfigError, match="pass either an optimizer or a learning-rate schedule"):
        fit(vae.model, vae.guide, digits.train_images, config, optimizer=pyro.optim.Adam({"lr": 1e-3}), progress=False)


def test_the_command_trains_with_a_schedule_and_refuses_to_stretch_it(tmp_path, capsys):
    out = tmp_path / "run"
    smoke = ["vae", "--batch-size", "100", "--hidden-dims", "16", "--no-progress", "--out", str(out),
             "--lr-schedule", "cosine", "--final-learning-rate", "1e-4"]
    assert cli.main([*smoke, "--epochs", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["lr_schedule"], metrics["final_learning_rate"], metrics["learning_rate"]) == ("cosine", 1e-4, 5e-3)
    capsys.readouterr()
    assert cli.main([*smoke, "--epochs", "3", "--resume"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "lr_schedule_epochs: 2 in the checkpoint, 3 now" in error
