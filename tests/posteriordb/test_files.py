"""posteriordb's files: .json and .json.zip data as keyword arguments, reference draws pooled by
name, the folder found from an option or $PYRO_VI_POSTERIORDB, and what is refused in one line."""

import json
import zipfile

import numpy as np
import pytest
import torch

from pyro_vi.commands import user_model
from pyro_vi.errors import ConfigError, DataError
from pyro_vi.posteriordb import files


def _write(path, value, zipped=False):
    text = json.dumps(value)
    if zipped:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(path.name[: -len(".zip")], text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("zipped", [False, True])
def test_data_lists_become_default_dtype_tensors_and_numbers_stay_numbers(tmp_path, zipped):
    path = _write(tmp_path / ("d.json.zip" if zipped else "d.json"), {"N": 3, "y": [1, 2.5, 3], "X": [[1, 2], [3, 4]],
                                                                       "s": 0.5}, zipped)
    data = user_model.load_data(path)  # what the commands' --data reads
    assert data.args == ()
    assert data.kwargs["N"] == 3 and isinstance(data.kwargs["N"], int)
    assert data.kwargs["s"] == 0.5 and isinstance(data.kwargs["s"], float)
    assert data.kwargs["y"].dtype == torch.get_default_dtype() and data.kwargs["y"].tolist() == [1.0, 2.5, 3.0]
    assert data.kwargs["X"].shape == (2, 2)
    assert data.describe() == {"N": [], "y": [3], "X": [2, 2], "s": []}


@pytest.mark.parametrize("value, message", [
    ([1, 2], "one non-empty JSON object"),
    ({"y": [[1, 2], [3]]}, "not a rectangular list"),
    ({"y": ["a"]}, "not a rectangular list"),
    ({"y": "text"}, "is a str"),
    ({"flag": True}, "is a bool"),
])
def test_bad_data_is_one_line(tmp_path, value, message):
    with pytest.raises(DataError, match=message):
        user_model.load_data(_write(tmp_path / "d.json", value))


def test_unreadable_json_and_zips_are_one_line(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot be read as JSON"):
        files.read_json(tmp_path / "bad.json")
    with zipfile.ZipFile(tmp_path / "two.json.zip", "w") as archive:
        archive.writestr("a.json", "{}")
        archive.writestr("b.json", "{}")
    with pytest.raises(DataError, match="holds 2 files"):
        files.read_json(tmp_path / "two.json.zip")
    with pytest.raises(DataError, match="does not exist"):
        files.read_json(tmp_path / "missing.json")


def test_reference_chains_are_pooled_by_name(tmp_path):
    chains = [{"mu": [1.0, 2.0], "theta[1]": [0.0, 1.0]}, {"mu": [3.0], "theta[1]": [2.0]}]
    reference = files.read_reference(_write(tmp_path / "r.json.zip", chains, zipped=True))
    np.testing.assert_array_equal(reference["mu"], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(reference["theta[1]"], [0.0, 1.0, 2.0])
    _write(tmp_path / "other.json", [{"mu": [1.0]}, {"tau": [1.0]}])
    with pytest.raises(DataError, match="chain 2 names other parameters"):
        files.read_reference(tmp_path / "other.json")


def _database(root):
    """A one-posterior folder in posteriordb's layout (the top folder of a clone)."""
    base = root / "posterior_database"
    for folder in ("posteriors", "models/stan", "data/data", "reference_posteriors/draws/draws"):
        (base / folder).mkdir(parents=True)
    _write(base / "posteriors" / "toy-normal.json", {"model_name": "normal", "data_name": "toy",
                                                     "reference_posterior_name": "toy-normal"})
    _write(base / "data" / "data" / "toy.json.zip", {"N": 2, "y": [0.0, 1.0]}, zipped=True)
    _write(base / "reference_posteriors" / "draws" / "draws" / "toy-normal.json.zip", [{"mu": [0.5, 0.6]}], zipped=True)
    return base


def test_the_folder_comes_from_the_option_or_the_environment(tmp_path, monkeypatch):
    base = _database(tmp_path)
    monkeypatch.delenv(files.ENVIRONMENT_VARIABLE, raising=False)
    with pytest.raises(ConfigError, match="PYRO_VI_POSTERIORDB"):
        files.database_root()
    assert files.database_root(tmp_path) == base and files.database_root(base) == base
    monkeypatch.setenv(files.ENVIRONMENT_VARIABLE, str(tmp_path))
    posterior = files.find_posterior("toy-normal")
    assert (posterior.model_name, posterior.data_name) == ("normal", "toy")
    assert posterior.reference_file.is_file() and posterior.stan_file.name == "normal.stan"
    assert files.posterior_names() == ["toy-normal"]
    with pytest.raises(ConfigError, match="no posterior 'nope'.*toy-normal"):
        files.find_posterior("nope")
    with pytest.raises(ConfigError, match="not a posteriordb folder"):
        files.database_root(tmp_path / "posterior_database" / "data")
