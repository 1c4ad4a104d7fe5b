"""The one param-store restore (``checkpoint.restore_param`` / ``restore_params``): used by the
engine on resume and by ``vae.model.load_checkpoint``. Values come back bit for bit, in place where
the param exists (so a ``pyro.module`` module holds them), with their constraint otherwise."""

from __future__ import annotations

import pyro
import pyro.distributions.constraints as constraints
import pytest
import torch
from torch import nn

from pyro_vi import engine
from pyro_vi.engine import checkpoint
from pyro_vi.engine.optim import Adam
from pyro_vi.errors import CheckpointError
from pyro_vi.vae.model import VAE, load_checkpoint


def _saved_store(tmp_path, names_and_values: dict, constraint_of: dict) -> dict:
    pyro.clear_param_store()
    for name, value in names_and_values.items():
        pyro.param(name, value, constraint=constraint_of.get(name, constraints.real))
    checkpoint.save(tmp_path / "checkpoint.pt", {}, {}, Adam({}))
    pyro.clear_param_store()
    return checkpoint.load(tmp_path / "checkpoint.pt")


def test_restore_params_copies_in_place_into_a_registered_module_and_adds_the_rest(tmp_path):
    torch.manual_seed(0)
    trained = nn.Linear(3, 2)
    scale = torch.tensor([0.3, 2.0])
    saved = _saved_store(
        tmp_path,
        {"net$$$weight": trained.weight.detach(), "net$$$bias": trained.bias.detach(), "scale": scale},
        {"scale": constraints.positive},
    )
    fresh = nn.Linear(3, 2)
    weight_object = fresh.weight
    pyro.module("net", fresh)
    checkpoint.restore_params(saved)
    assert fresh.weight is weight_object  # in place: the module keeps its own parameter
    assert torch.equal(fresh.weight, trained.weight) and torch.equal(fresh.bias, trained.bias)
    store = pyro.get_param_store()
    assert store.get_param("net$$$weight").unconstrained() is fresh.weight
    # A param not yet in the store is added with its checkpointed constraint, its unconstrained value bit for bit.
    assert store.get_state()["constraints"]["scale"] is constraints.positive
    assert torch.equal(store.get_param("scale").unconstrained(), saved["param_store"]["params"]["scale"])
    assert torch.allclose(pyro.param("scale"), scale)
    assert store.get_param("scale").unconstrained().requires_grad


def test_restore_param_refuses_another_shape_in_one_line(tmp_path):
    saved = _saved_store(tmp_path, {"w": torch.ones(3)}, {})
    pyro.param("w", torch.zeros(4))
    with pytest.raises(CheckpointError, match=r"checkpoint param 'w' has shape \(3,\).*the model makes it \(4,\)") as raised:
        checkpoint.restore_params(saved)
    assert "\n" not in str(raised.value)


def test_load_checkpoint_restores_the_vae_a_resumed_fit_would(tmp_path):
    """A learned Gaussian scale too (a constrained param created lazily by the model)."""
    path = tmp_path / "checkpoint.pt"
    vae = VAE(6, z_dim=2, hidden_dims=(4,), likelihood="gaussian", x_scale=None)
    x = torch.rand(8, 6, generator=torch.Generator().manual_seed(1))
    engine.fit(vae.model, vae.guide, x, num_steps=3, seed=0, progress=False, checkpoint=path,
               checkpoint_config={"model": vae.config})
    trained = {name: value.detach().clone() for name, value in pyro.get_param_store().get_state()["params"].items()}
    assert "x_scale" in trained
    pyro.clear_param_store()
    loaded, config = load_checkpoint(path)
    assert config == vae.config
    store = pyro.get_param_store()
    assert sorted(store.keys()) == sorted(trained)
    for name, value in trained.items():
        assert torch.equal(store.get_param(name).unconstrained(), value), name
    for key, parameter in loaded.encoder.named_parameters():  # the modules hold the store's tensors
        assert store.get_param("encoder$$$" + key).unconstrained() is parameter
    assert torch.equal(loaded.decoder(torch.zeros(1, 2)), vae.decoder(torch.zeros(1, 2)))


def _coin(data):
    p = pyro.param("p", torch.tensor(0.5), constraint=constraints.unit_interval)
    with pyro.plate("data", len(data)):
        pyro.sample("x", pyro.distributions.Bernoulli(p), obs=data)


def _no_guide(data):
    pass


def test_fit_given_the_loaded_checkpoint_does_not_read_it_again_and_still_checks_its_config(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    data = torch.tensor([1.0, 1.0, 0.0, 1.0])
    options = dict(seed=0, progress=False, checkpoint=path, optim=Adam({"lr": 0.05}))
    straight = engine.fit(_coin, _no_guide, data, num_steps=6, **{**options, "checkpoint": None})
    pyro.clear_param_store()
    engine.fit(_coin, _no_guide, data, num_steps=3, **options)
    loaded = checkpoint.load(path)
    reads = []
    original = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: reads.append(args) or original(*args, **kwargs))
    pyro.clear_param_store()
    resumed = engine.fit(_coin, _no_guide, data, num_steps=6, resume=True, loaded_checkpoint=loaded,
                         **{**options, "optim": Adam({"lr": 0.05})})
    assert reads == []
    assert resumed.losses == straight.losses  # the resumed run continues bit for bit
    with pytest.raises(CheckpointError, match="different configuration"):
        engine.fit(_coin, _no_guide, data, num_steps=6, resume=True, loaded_checkpoint=loaded,
                   checkpoint_config={"model": {"name": "another"}}, **options)
    assert reads == []
