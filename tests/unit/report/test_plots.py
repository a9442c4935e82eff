"""The report's plots, read back from their matplotlib figures: ties offset with distinct markers, markers and the
chance level with one SNR, one symmetric colour scale for every heat map with readable labels, the layer weights as
saved, and the ``released`` spec shortcut of the command line."""

import json
import os
import re

import matplotlib.colors
import pytest

from robustdistiller.downstream.tasks import get_task
from robustdistiller.report import load_spec, spec_from_dict
from robustdistiller.report import plots
from robustdistiller.report.__main__ import SPEC_SHORTCUTS, spec_path
from robustdistiller.report.tables import collect


def write_results(root, task, upstream, values, metric, **extra):
    folder = os.path.join(root, task, upstream)
    os.makedirs(folder)
    content = {"task": task, "results": {condition: {metric: value} for condition, value in values.items()}, **extra}
    with open(os.path.join(folder, "results.json"), "w", encoding="utf-8") as fout:
        json.dump(content, fout)


@pytest.fixture
def report(tmp_path):
    """KS: teacher and student tied at snr5, one SNR only, a third upstream never run; PR: very different
    degradations (teacher +10 %, student +300 %)."""
    root = str(tmp_path)
    write_results(root, "KS", "teacher", {"clean": 0.90, "snr5": 0.60}, "accuracy", layer_weights=[0.1, 0.2, 0.7])
    write_results(root, "KS", "student", {"clean": 0.80, "snr5": 0.60}, "accuracy", layer_weights=[0.5, 0.5])
    write_results(root, "PR", "teacher", {"clean": 10.0, "snr5": 11.0}, "PER")
    write_results(root, "PR", "student", {"clean": 10.0, "snr5": 40.0}, "PER", layer_weights=[0.25, 0.75])
    spec = spec_from_dict(
        {
            "output_root": root,
            "mode": "report",
            "upstreams": {"teacher": "/m/teacher", "student": "/m/student", "never_run": "/m/never"},
            "tasks": ["KS", "PR"],
            "conditions": ["clean", "snr5"],
        }
    )
    return collect(spec)


def data_lines(axis):
    """``{label: Line2D}`` of the upstreams' lines (the legend's labels; the chance line and separators left out)."""
    return {line.get_label(): line for line in axis.get_lines() if len(line.get_xdata()) and line.get_marker()}


def test_tied_upstreams_are_offset_with_distinct_markers_and_one_snr_still_draws(report):
    figure = plots.snr_curve_figure("KS", report["tasks"]["KS"])
    axis = figure.axes[0]
    lines = data_lines(axis)
    teacher, student = lines["teacher"], lines["student"]
    # one SNR (5 dB) and the clean point: two markers per upstream; x step 5 dB (one SNR), offsets 0.08 x 5 = 0.4 apart
    assert list(teacher.get_ydata()) == pytest.approx([60.0, 90.0]) and list(student.get_ydata()) == pytest.approx(
        [60.0, 80.0]
    )
    assert student.get_xdata()[0] - teacher.get_xdata()[0] == pytest.approx(0.08 * 5.0)
    assert teacher.get_marker() != student.get_marker() and teacher.get_color() != student.get_color()
    # the pair never run stays in the legend, named as missing
    assert "never_run: missing" in [text.get_text() for text in axis.get_legend().get_texts()]
    # KS's chance level: a uniform guess among 12 classes, in percent, dashed
    chance = [line for line in axis.get_lines() if line.get_label().startswith("chance")]
    assert len(chance) == 1 and chance[0].get_linestyle() == "--"
    assert chance[0].get_ydata()[0] == pytest.approx(100 / 12)
    plots._pyplot().close(figure)
    # PR (PER) has no single chance level
    figure = plots.snr_curve_figure("PR", report["tasks"]["PR"])
    assert not [line for line in figure.axes[0].get_lines() if line.get_label().startswith("chance")]
    plots._pyplot().close(figure)


def test_every_heat_map_has_the_same_symmetric_colour_scale_and_readable_labels(report):
    # the largest |degradation| of the whole report: PR student, (40 - 10) / 10 = +300 %
    limit = plots.degradation_color_limit(report)
    assert limit == pytest.approx(300.0)
    scales = {}
    for upstream in ("teacher", "student"):
        figure = plots.degradation_heatmap_figure(report, upstream)
        axis = figure.axes[0]
        scales[upstream] = axis.get_images()[0].get_clim()
        texts = {text.get_text(): matplotlib.colors.to_hex(text.get_color()) for text in axis.texts}
        if upstream == "student":
            assert texts["+300.0"] == "#ffffff"  # the darkest cell: white label
            assert texts["+25.0"] == "#000000"  # KS (0.8 -> 0.6): a light cell, black label
        plots._pyplot().close(figure)
    assert scales["teacher"] == scales["student"] == pytest.approx((-300.0, 300.0))


def test_layer_weight_plot_shows_the_saved_weights_one_colour_per_upstream(report, tmp_path):
    figure = plots.layer_weights_figure(report)
    panels = {axis.get_title(): data_lines(axis) for axis in figure.axes if axis.get_visible()}
    assert set(panels) == {"KS", "PR"}
    assert list(panels["KS"]["teacher"].get_ydata()) == [0.1, 0.2, 0.7]
    assert list(panels["KS"]["student"].get_xdata()) == [0, 1]
    assert panels["KS"]["student"].get_color() == panels["PR"]["student"].get_color()
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["teacher", "student", plots.UNIFORM_LABEL]
    # the initial uniform weights of each depth: 1/3 (teacher, KS) and 1/2 (student)
    uniform = [collection.get_segments()[0] for collection in figure.axes[0].collections]
    assert sorted(segment[0][1] for segment in uniform) == pytest.approx([1 / 3, 1 / 2])
    plots._pyplot().close(figure)
    assert plots.plot_layer_weights(report, str(tmp_path / "weights.png")) == str(tmp_path / "weights.png")
    assert (tmp_path / "weights.png").stat().st_size > 0


def test_the_released_shortcut_names_the_ready_spec_unless_a_file_has_that_name(tmp_path, monkeypatch):
    assert spec_path("released") == SPEC_SHORTCUTS["released"]
    assert set(load_spec(spec_path("released")).upstreams) >= {"rd_hubert", "rd_wavlm", "rd_rhubert", "rddpwavlm"}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "released").write_text("output_root: x\n")
    assert spec_path("released") == "released"


@pytest.mark.parametrize("task, count_key", [("KS", "num_classes"), ("ER", "num_emotions"), ("SID", "num_speakers")])
def test_the_chance_level_is_a_uniform_guess_among_the_recipes_classes(task, count_key):
    """The registry's chance level (the dashed line) against the class count of the recipe's own YAML."""
    info = get_task(task)
    with open(info.hparams_file, encoding="utf-8") as fin:
        count = int(re.search(rf"^{count_key}: *(\d+)", fin.read(), re.MULTILINE).group(1))
    assert info.chance == pytest.approx(1 / count)
