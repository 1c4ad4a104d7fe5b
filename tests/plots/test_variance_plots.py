"""The variance lab's figures: one colour per estimator in every figure, a chart by estimator (not a
column of dots) for a single particle count, titles that say where the gradients were measured, and
pyro-vi variance's one line for a ranking that reads backwards."""

import matplotlib.colors
import pytest

from pyro_vi.commands import variance as variance_command
from pyro_vi.estimators import ESTIMATORS
from pyro_vi.plots import variance as plots_variance

ROWS = [{"estimator": e, "num_particles": k, "total_variance": v / k, "total_variance_standard_error": 0.1 * v / k, "snr": 1.0}
        for e, v in (("score", 50.0), ("reparam", 1.0)) for k in (2, 4, 16)] + [
       {"estimator": "rloo", "num_particles": k, "total_variance": 20.0 / k, "total_variance_standard_error": None, "snr": 1.0}
       for k in (4, 16)]


def _rgb(color):
    return matplotlib.colors.to_rgb(color)


def test_every_estimator_has_its_own_fixed_colour():
    colours = [_rgb(plots_variance.estimator_color(name)) for name in ESTIMATORS]
    assert len(set(colours)) == len(ESTIMATORS)
    assert plots_variance.estimator_color("my-estimator") == plots_variance.estimator_color("my-estimator")


def test_an_estimator_keeps_its_colour_from_figure_to_figure(tmp_path):
    """The same estimator, listed in another order and with other company, is drawn in one colour."""
    lines = plots_variance.variance_vs_particles(ROWS, tmp_path / "v.png").axes[0].lines
    assert {line.get_label(): _rgb(line.get_color()) for line in lines} == {
        name: _rgb(plots_variance.estimator_color(name)) for name in ("score", "reparam", "rloo")}
    bars = plots_variance.total_variance_by_estimator(ROWS[::-1], tmp_path / "b.png").axes[0].patches
    assert len(bars) == 8  # rloo has no bar at k = 2
    reparam_bars = [bar for bar in bars if bar.get_height() in (1.0 / 2, 1.0 / 4, 1.0 / 16)]
    assert len(reparam_bars) == 3
    assert {bar.get_facecolor()[:3] for bar in reparam_bars} == {_rgb(plots_variance.estimator_color("reparam"))}
    single = [row for row in ROWS if row["num_particles"] == 4]
    points = plots_variance.variance_vs_particles(single[::-1], tmp_path / "s.png").axes[0].lines
    drawn = {tuple(line.get_ydata()): _rgb(line.get_color()) for line in points if line.get_marker() == "o"}
    assert drawn == {(0,): _rgb(plots_variance.estimator_color("rloo")), (1,): _rgb(plots_variance.estimator_color("reparam")),
                     (2,): _rgb(plots_variance.estimator_color("score"))}


def test_one_particle_count_is_a_chart_by_estimator_with_error_bars(tmp_path):
    single = [row for row in ROWS if row["num_particles"] == 4]
    figure = plots_variance.variance_vs_particles(single, tmp_path / "v.png", where="initial params")
    axis = figure.axes[0]
    # one row per estimator (not one x position for all), each point at its value
    assert [label.get_text() for label in axis.get_yticklabels()] == ["score", "reparam", "rloo"]
    markers = [line for line in axis.lines if line.get_marker() == "o"]
    assert [float(line.get_xdata()[0]) for line in markers] == [50.0 / 4, 1.0 / 4, 20.0 / 4]
    # +-2 SE where the row has one (score, reparam), none for rloo
    assert len(axis.collections) == 2
    score_bar = axis.collections[0].get_segments()[0]
    assert score_bar[0][0] == pytest.approx(12.5 - 2 * 1.25) and score_bar[1][0] == pytest.approx(12.5 + 2 * 1.25)
    assert "k = 4 particles" in axis.get_title() and "measured at initial params" in axis.get_title()
    assert (tmp_path / "v.png").stat().st_size > 0


def test_titles_say_where_the_gradients_were_measured(tmp_path):
    where = "checkpoint runs/fit/checkpoint.pt at step 1000"
    for figure in (plots_variance.variance_vs_particles(ROWS, where=where),
                   plots_variance.variance_vs_particles(ROWS, key="snr", ylabel="SNR", where=where),
                   plots_variance.total_variance_by_estimator(ROWS, where=where)):
        assert f"measured at {where}" in figure.axes[0].get_title()


def _summary(variances, k=2):
    return [{"estimator": name, "num_particles": k, "total_variance": value} for name, value in variances.items()]


def test_a_baselined_score_estimator_below_reparam_gets_one_line_of_interpretation():
    lines = variance_command.interpret(_summary({"reparam": 8.0, "score": 416.0, "score-baseline": 0.29, "rloo": 0.46}))
    assert len(lines) == 1
    assert "reparam has 27.6x the variance of score-baseline at k=2" in lines[0]
    assert "at q ~ posterior a baselined score estimator's variance goes to zero" in lines[0]
    # the expected order (pathwise below the score family), or plain score below reparam: nothing to explain
    assert variance_command.interpret(_summary({"reparam": 0.3, "score": 416.0, "score-baseline": 8.0, "rloo": 4.0})) == []
    assert variance_command.interpret(_summary({"reparam": 8.0, "score": 4.0, "stl": 9.0})) == []
    # stl goes to zero at the posterior too: below it, a baselined estimator is no surprise
    assert variance_command.interpret(_summary({"stl": 0.5, "rloo": 0.1})) == []
    # different particle counts are not compared
    assert variance_command.interpret(_summary({"reparam": 8.0}, k=1) + _summary({"rloo": 0.1}, k=4)) == []
