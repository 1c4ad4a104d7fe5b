"""`pyro-vi compare FILE.py:MODEL GUIDE --data DATA --estimators ...`: one row per estimator that
runs, a refused one skipped in one line, every run from the same start."""

import json
from pathlib import Path

import pytest

from pyro_vi import cli
from pyro_vi.commands import user_model

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "my_model.py"
EXAMPLE_DATA = ROOT / "examples" / "my_model_data.npz"
COIN = [f"{EXAMPLE}:model", f"{EXAMPLE}:guide", "--data", str(EXAMPLE_DATA)]


def test_one_row_per_estimator_and_a_refused_one_skipped(tmp_path, capsys):
    """enum needs discrete latent sites; the coin has one continuous site, so enum is skipped with
    one line and the three others are trained and measured (variance at steps 0 and 20)."""
    out = tmp_path / "compare"
    assert cli.main(["compare", *COIN, "--estimators", "reparam,score-baseline,enum,rloo", "--num-steps", "20",
                     "--variance-points", "2", "--elbo-samples", "10", "--learning-rate", "0.05",
                     "--no-progress", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    skipped_lines = [line for line in captured.err.splitlines() if "skipping" in line]
    assert len(skipped_lines) == 1 and "enum" in skipped_lines[0] and "discrete" in skipped_lines[0]
    report = json.loads((out / "compare.json").read_text())
    assert [row["estimator"] for row in report["estimators"]] == ["reparam", "score-baseline", "rloo"]
    assert [row["estimator"] for row in report["skipped"]] == ["enum"]
    assert report["variance_steps"] == [0, 20] and report["initial_params"] == ["alpha_q", "beta_q"]
    for row in report["estimators"]:
        assert [point["step"] for point in row["variance"]] == [0, 20]
        assert all(point["total_variance"] > 0 for point in row["variance"])
        assert len(row["losses"]) == len(row["times"]) == 20 and row["times"] == sorted(row["times"])
        assert row["seconds"] > 0 and row["final_elbo"] < 0 and row["final_elbo_standard_error"] > 0
        assert row["num_particles"] == 2
    assert (out / "compare.png").stat().st_size > 0
    table = captured.out
    assert all(name in table for name in ("reparam", "score-baseline", "rloo")) and "final ELBO" in table
    # --replicates not given: sized from the steps (here the floor, 20), and the share of time said
    assert report["replicates"] == 20
    assert "variance measurements (20 draws each)" in table and "% of the training time" in table


def test_default_replicates_are_a_quarter_of_the_steps_within_bounds(capsys):
    """points x draws <= steps / 4 between the floor (20) and the old default (200)."""
    from pyro_vi.commands import compare

    assert compare.default_replicates(1000, 5) == 50
    assert compare.default_replicates(100_000, 5) == 200 and compare.default_replicates(10, 5) == 20
    assert "a quarter of the training" in " ".join(compare_help(capsys).split())
    # --variance-points 0 is refused in one line before the default is computed
    assert cli.main(["compare", *COIN, "--variance-points", "0", "--no-progress"]) == 2
    assert "--variance-points must be at least 1" in capsys.readouterr().err


def compare_help(capsys) -> str:
    with pytest.raises(SystemExit):
        cli.main(["compare", "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("estimators, position", [("score,reparam", 1), ("reparam,score", 0)],
                         ids=["after-a-rebuild", "on-the-preflight-pair"])
def test_every_estimator_starts_from_the_same_params(tmp_path, estimators, position):
    """compare's step-0 measurement of reparam equals pyro-vi variance's at the initial params with
    the same seed, replicates and particles: the same start, bit for bit, whether reparam runs first
    (on the pair the preflight built) or second (on a pair built afresh)."""
    out = tmp_path / "compare"
    assert cli.main(["compare", *COIN, "--estimators", estimators, "--num-steps", "3", "--replicates", "20",
                     "--variance-points", "1", "--elbo-samples", "2", "--no-progress", "--out", str(out)]) == 0
    row = json.loads((out / "compare.json").read_text())["estimators"][position]
    assert row["estimator"] == "reparam"
    assert cli.main(["variance", *COIN, "--estimators", "reparam", "--particles", "2", "--replicates", "20",
                     "--out", str(tmp_path / "variance")]) == 0
    summary = json.loads((tmp_path / "variance" / "variance.json").read_text())["summary"]
    assert row["variance"][0]["total_variance"] == summary[0]["total_variance"]


def test_no_estimator_applies_is_one_line(tmp_path, capsys):
    out = tmp_path / "compare"
    assert cli.main(["compare", *COIN, "--estimators", "enum,gumbel", "--num-steps", "2", "--no-progress",
                     "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("pyro-vi compare: error: no estimator can run") and not out.exists()


def test_each_input_is_read_once(tmp_path, monkeypatch):
    """Single preflight: the data file is read once for all runs, and the model file is imported
    once per run (the preflight's import is the first run's), not once more for the preflight."""
    calls = {"load_data": 0, "import": 0}

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(user_model, "load_data", counting("load_data", user_model.load_data))
    monkeypatch.setattr(user_model, "_import", counting("import", user_model._import))
    assert cli.main(["compare", *COIN, "--estimators", "reparam,enum,score", "--num-steps", "2", "--replicates", "2",
                     "--variance-points", "1", "--elbo-samples", "2", "--no-progress", "--out", str(tmp_path / "out")]) == 0
    # two runs (enum is refused at the preflight): the model and guide share one file, one import per run
    assert calls == {"load_data": 1, "import": 2}


def test_runs_per_estimator_with_mean_and_standard_error(tmp_path, capsys):
    """--runs 3: every run's curve, the final ELBO's mean and standard error over runs, the steps to
    come within --within nats of the best mean; score-baseline keeps state, so its runs go one after
    another (said in one line), the others are one batched step."""
    import math

    out = tmp_path / "compare"
    assert cli.main(["compare", *COIN, "--estimators", "reparam,score-baseline", "--runs", "3", "--num-steps", "10",
                     "--variance-points", "3", "--elbo-samples", "5", "--replicates", "4", "--learning-rate", "0.05", "--within", "0.5",
                     "--no-progress", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert [line for line in captured.err.splitlines() if "one after another" in line] == [
        "compare: score-baseline: fit_many runs the 3 runs one after another: estimator 'score-baseline' keeps state "
        "between steps (a baseline)"]
    report = json.loads((out / "compare.json").read_text())
    assert report["runs"] == 3 and report["within"] == 0.5 and report["variance_steps"] == [0, 5, 10]
    rows = {row["estimator"]: row for row in report["estimators"]}
    assert rows["reparam"]["batched"] and not rows["score-baseline"]["batched"]
    best = max(row["final_elbo_mean"] for row in rows.values())
    for row in rows.values():
        runs = row["runs"]
        assert [run["run"] for run in runs] == [0, 1, 2] and all(len(run["losses"]) == 10 for run in runs)
        assert runs[0]["losses"] != runs[1]["losses"] != runs[2]["losses"]  # independent runs, not copies
        finals = [run["final_elbo"] for run in runs]
        mean = sum(finals) / 3
        se = math.sqrt(sum((f - mean) ** 2 for f in finals) / 2 / 3)
        assert math.isclose(row["final_elbo_mean"], mean) and math.isclose(row["final_elbo_standard_error"], se)
        assert len(row["times"]) == 10 and row["times"] == sorted(row["times"]) and row["seconds"] == row["times"][-1]
        reach = row["steps_to_within"]
        assert reach["target_elbo"] == best - 0.5 and len(reach["per_run"]) == 3
        assert reach["reached"] == sum(step is not None for step in reach["per_run"])
        assert all(1 <= step <= 10 for step in reach["per_run"] if step is not None)
        assert [point["step"] for point in row["variance"]] == [0, 5, 10] and [p["runs"] for p in row["variance"]] == [1, 3, 3]
        assert all(point["total_variance"] > 0 for point in row["variance"])
    assert (out / "compare.png").stat().st_size > 0
    assert "final ELBO (3 runs)" in captured.out and "steps to within" in captured.out
    # --runs 0 refused in one line before any work
    assert cli.main(["compare", *COIN, "--runs", "0", "--no-progress", "--out", str(tmp_path / "other")]) == 2
    assert "--runs must be at least 1" in capsys.readouterr().err and not (tmp_path / "other").exists()
