"""pyro-vi variance: an estimator that cannot run at a particle count is skipped there (one line), the
rest measured; the variance-vs-particles axis labels plain counts; legends sit outside the axes."""

import json

from matplotlib.backends.backend_agg import FigureCanvasAgg

from pyro_vi import cli
from pyro_vi.plots import variance as plots_variance


def test_rloo_is_skipped_at_one_particle_and_the_rest_measured(tmp_path, capsys):
    out = tmp_path / "run"
    status = cli.main(["variance", "--model", "pyro-test", "--estimators", "reparam,rloo", "--particles", "1,4",
                       "--replicates", "20", "--out", str(out)])
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    skipped = [line for line in lines if ": skipped (" in line]
    assert len(skipped) == 1 and "rloo k=1" in skipped[0] and "at least 2 particles" in skipped[0]
    report = json.loads((out / "variance.json").read_text())
    assert {(r["estimator"], r["num_particles"]) for r in report["summary"]} == {("reparam", 1), ("reparam", 4), ("rloo", 4)}
    assert [(s["estimator"], s["num_particles"]) for s in report["skipped"]] == [("rloo", 1)]
    assert {(r["estimator"], r["num_particles"]) for r in report["params"]} == {("reparam", 1), ("reparam", 4), ("rloo", 4)}


def test_an_estimator_that_runs_at_no_count_is_still_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["variance", "--estimators", "rloo", "--particles", "1", "--out", str(out)]) == 2
    assert "rloo needs at least 2 particles" in capsys.readouterr().err
    assert not out.exists()


ROWS = [{"estimator": e, "num_particles": k, "total_variance": v / k, "snr": 1.0}
        for e, v in (("reparam", 1.0), ("score", 50.0)) for k in (1, 4, 16)] + [
       {"estimator": "rloo", "num_particles": k, "total_variance": 20.0 / k, "snr": 1.0} for k in (4, 16)]


def test_particle_axis_shows_plain_counts_and_the_legend_is_outside(tmp_path):
    figure = plots_variance.variance_vs_particles(ROWS, tmp_path / "v.png")
    axis = figure.axes[0]
    FigureCanvasAgg(figure).draw()  # the figure comes back closed: give it a canvas to lay out on
    assert [t.get_text() for t in axis.get_xticklabels()] == ["1", "4", "16"]
    assert all(not t.get_text() for t in axis.get_xticklabels(minor=True))
    renderer = figure.canvas.get_renderer()
    legend, frame = axis.get_legend().get_window_extent(renderer), axis.get_window_extent(renderer)
    assert legend.x0 >= frame.x1  # right of the data area: it hides no point
    bars = plots_variance.total_variance_by_estimator(ROWS, tmp_path / "b.png")
    FigureCanvasAgg(bars).draw()
    renderer = bars.canvas.get_renderer()
    assert bars.axes[0].get_legend().get_window_extent(renderer).x0 >= bars.axes[0].get_window_extent(renderer).x1
    assert len(bars.axes[0].patches) == 8  # rloo has no bar at k = 1
