"""The cross-task robustness report (``python -m robustdistiller.report SPEC.yaml``).

One module-scoped run of the real command in ``run`` mode on the KS fixture: two tiny random upstreams
(WavLM, HuBERT) and a nonexistent one, conditions clean / snr5 / reverb with the mini corpus's test noise.
The tests read its tables, plots and provenance against the pairs' own ``results.json``, then check the
second invocation (done pairs skipped), a changed override (refused), ``print`` mode, and the maths of
orientation / ranks / degradation / score on a hand-made results set.
"""

from pathlib import Path
import contextlib
import csv
import io
import json
import os
import shlex
import sys

import pytest
import yaml

from tests.conftest import corruption_overrides

from robustdistiller.downstream.tasks import REPOSITORY_ROOT
from robustdistiller.testing.fixtures.speech_commands import generate_speech_commands
from robustdistiller.report import run_report, spec_from_dict, SpecError
from robustdistiller.report.__main__ import main as report_main
from robustdistiller.report.runner import PairMismatch
from robustdistiller.report.tables import collect

CONDITIONS = ["clean", "snr5", "reverb"]
# Tiny KS: one epoch of batch 8 on the fixture's ~100 training items, a 32-wide projector.
KS_OVERRIDES = {
    "lr": 0.01,
    "number_of_epochs": 1,
    "projector_size": 32,
    "train_dataloader_opts": {"batch_size": 8, "drop_last": True, "num_workers": 0},
    "valid_dataloader_opts": {"batch_size": 24, "num_workers": 0},
}


def ks_spec(root, upstreams, speech_commands, mini_corpus, **changes):
    spec = {
        "output_root": str(root),
        "upstreams": upstreams,
        "tasks": ["KS"],
        "conditions": CONDITIONS,
        "corruption": corruption_overrides(mini_corpus),
        "data": {"KS": {"data_folder": speech_commands["data_folder"], "test_folder": speech_commands["test_folder"]}},
        "overrides": {"KS": dict(KS_OVERRIDES)},
    }
    spec.update(changes)
    return spec


@pytest.fixture(scope="module")
def report_run(tmp_path_factory, tiny_teacher_folder, mini_corpus):
    """The report command run once in ``run`` mode: spec dict, spec path, exit code, console output.

    ``main`` runs in this process (the recipes in subprocesses, as always): the console is captured.
    """
    from robustdistiller.models.teacher import save_random_teacher

    base = tmp_path_factory.mktemp("report")
    # a small Speech Commands: 3 training, 1 dev and 2 test speakers (~65 training items, 24 test clips)
    speech_commands = generate_speech_commands(
        str(base / "speech_commands"), seed=0, train_speakers=3, dev_speakers=1, test_speakers=2, background_seconds=4
    )
    hubert = save_random_teacher(str(base / "hubert"), model_type="hubert", tiny=True, seed=1)
    upstreams = {
        "wavlm": tiny_teacher_folder,
        "hubert": {"source": hubert, "kind": "hf"},
        "broken": str(base / "no_such_model"),
    }
    spec = ks_spec(base / "out", upstreams, speech_commands, mini_corpus)
    path = base / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    console = io.StringIO()
    saved = {name: os.environ.get(name) for name in ("HF_HUB_OFFLINE", "OMP_NUM_THREADS")}
    os.environ.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")  # the recipes' subprocesses inherit them
    try:
        with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
            code = report_main([str(path)])
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return {"spec": spec, "path": str(path), "code": code, "output": console.getvalue()}


def results_of(root, upstream):
    with open(os.path.join(root, "KS", upstream, "results.json"), encoding="utf-8") as fin:
        return json.load(fin)


def test_report_tables_and_plots_come_from_the_recipe_outputs(report_run):
    root = report_run["spec"]["output_root"]
    output = report_run["output"]
    assert report_run["code"] == 1, output  # one pair failed; the report is written all the same
    for line in (
        "[1/3] KS/wavlm: running",
        "[1/3] KS/wavlm: done",
        "[2/3] KS/hubert: done",
        "[3/3] KS/broken: FAILED (exit 1)",
    ):
        assert line in output, output
    broken_log = os.path.join(root, "logs", "KS", "broken.log")
    assert "no_such_model" in Path(broken_log).read_text()  # the recipe's own error is in the pair's log
    folder = os.path.join(root, "report")
    report = json.loads(Path(os.path.join(folder, "report.json")).read_text())
    entry = report["tasks"]["KS"]
    assert (entry["metric"], entry["higher_is_better"], entry["conditions"]) == ("accuracy", True, CONDITIONS)

    # the KS table: one row per upstream, one column per condition, the results.json numbers (in %)
    rows = list(csv.reader(Path(os.path.join(folder, "KS.csv")).read_text().splitlines()))
    assert rows[0] == ["upstream"] + CONDITIONS
    table = {row[0]: row[1:] for row in rows[1:]}
    assert list(table) == ["wavlm", "hubert", "broken"]
    markdown = Path(os.path.join(folder, "report.md")).read_text()
    for upstream in ("wavlm", "hubert"):
        results = results_of(root, upstream)["results"]
        assert set(results) == set(CONDITIONS)
        accuracies = [results[condition]["accuracy"] for condition in CONDITIONS]
        assert [float(value) for value in table[upstream]] == pytest.approx(accuracies)
        assert "| " + upstream + " | " + " | ".join(f"{100 * value:.2f}" for value in accuracies) + " |" in markdown
        # degradation from clean, positive = worse (accuracy: higher is better)
        clean = results["clean"]["accuracy"]
        for condition in ("snr5", "reverb"):
            expected = 100 * (clean - results[condition]["accuracy"]) / clean
            assert entry["cells"][upstream]["degradation"][condition] == pytest.approx(expected)
    # the failed pair is shown as failed with its log, never dropped
    assert table["broken"] == [f"failed: {broken_log}"] * 3
    # report.md gives the log relative to the report's folder (the folder can be moved as is)
    assert "| broken | failed: ../logs/KS/broken.log | failed | failed |" in markdown
    assert root not in markdown
    assert entry["cells"]["broken"]["status"] == "failed"
    degradation_rows = list(csv.reader(Path(os.path.join(folder, "KS_degradation.csv")).read_text().splitlines()))
    assert degradation_rows[0] == ["upstream", "snr5", "reverb"] and len(degradation_rows) == 4

    # cross-task summary: ranks among the upstreams with a number; the failed one has none
    summary = report["summary"]
    for condition in CONDITIONS:
        ranked = {name: stats["mean_rank"] for name, stats in summary[condition].items()}
        assert ranked["broken"] is None and summary[condition]["broken"]["tasks"] == 0
        wavlm, hubert = (results_of(root, name)["results"][condition]["accuracy"] for name in ("wavlm", "hubert"))
        expected = (1.0, 2.0) if wavlm > hubert else (2.0, 1.0) if hubert > wavlm else (1.5, 1.5)
        assert (ranked["wavlm"], ranked["hubert"]) == expected
    assert "## Cross-task summary" in markdown and "| clean | broken | n/a | 0/1 | n/a | - |" in markdown

    # plots: metric vs SNR for KS, one degradation heat map per upstream, linked from report.md
    for name in ("KS_snr.png", "degradation_wavlm.png", "degradation_hubert.png", "degradation_broken.png"):
        with open(os.path.join(folder, name), "rb") as fin:
            assert fin.read(8) == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in markdown

    # provenance per number: recipe, YAML, lr, the tested checkpoint, finished date, folder
    provenance = {
        row["upstream"]: row
        for row in csv.DictReader(Path(os.path.join(folder, "provenance.csv")).read_text().splitlines())
    }
    assert set(provenance) == {"wavlm", "hubert"}
    for upstream, row in provenance.items():
        results = results_of(root, upstream)
        assert row["recipe"] == "SpeechCommands/KS"
        assert row["hparams"] == "recipes/SpeechCommands/KS/hparams/superb_ks.yaml"
        assert float(row["lr"]) == 0.01
        assert row["checkpoint"] == results["results"]["clean"]["checkpoint"]
        assert row["finished"] == results["provenance"]["finished"]
        assert row["output_folder"] == os.path.join(root, "KS", upstream)
    assert "## Provenance" in markdown


def test_second_invocation_skips_done_pairs(report_run):
    root = report_run["spec"]["output_root"]
    spec_dict = dict(
        report_run["spec"], upstreams={name: report_run["spec"]["upstreams"][name] for name in ("wavlm", "hubert")}
    )
    modified = {
        name: os.stat(os.path.join(root, "KS", name, "results.json")).st_mtime_ns for name in ("wavlm", "hubert")
    }
    stream = io.StringIO()
    code, report = run_report(spec_from_dict(spec_dict, "second.yaml"), stream)
    assert code == 0
    assert stream.getvalue().count("done earlier") == 2 and "running" not in stream.getvalue()
    assert {
        name: os.stat(os.path.join(root, "KS", name, "results.json")).st_mtime_ns for name in ("wavlm", "hubert")
    } == modified
    assert [cell["status"] for cell in report["tasks"]["KS"]["cells"].values()] == ["ok", "ok"]


def test_changed_override_is_refused_naming_pair_key_and_values(report_run, capsys, tmp_path):
    spec_dict = json.loads(json.dumps(report_run["spec"]))
    spec_dict["overrides"]["KS"]["lr"] = 0.02
    with pytest.raises(PairMismatch) as error:
        run_report(spec_from_dict(spec_dict, "changed.yaml"))
    message = str(error.value)
    for text in ("KS/wavlm", "KS/hubert", "lr: 0.01 in", "0.02 in the spec"):
        assert text in message, message
    assert "KS/broken" not in message  # it never started: nothing recorded to differ from
    # SpeechBrain run options are not in hyperparams.yaml: they are compared with the recorded command
    spec_dict["overrides"]["KS"].update(lr=0.01, grad_accumulation_factor=2)
    with pytest.raises(PairMismatch, match=r"grad_accumulation_factor \(run option\): '<absent>' in .*run_info.json"):
        run_report(spec_from_dict(spec_dict, "changed.yaml"))
    spec_dict["overrides"]["KS"].pop("grad_accumulation_factor")
    spec_dict["overrides"]["KS"]["lr"] = 0.02
    # the command line says so and exits 2, running nothing
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(spec_dict, sort_keys=False))
    assert report_main([str(path)]) == 2
    assert "lr: 0.01 in" in capsys.readouterr().err


def test_print_mode_prints_one_command_per_pair_to_run(report_run, tmp_path):
    spec_dict = json.loads(json.dumps(report_run["spec"]))
    new_source = str(tmp_path / "another_model")
    spec_dict["upstreams"]["another"] = new_source
    stream = io.StringIO()
    code, report = run_report(spec_from_dict(spec_dict, "print.yaml", mode="print"), stream)
    assert code == 0 and report is None
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # broken (failed: to rerun) and another; the two done pairs are left out
    assert {shlex.split(line)[1] for line in lines} == {
        os.path.join(REPOSITORY_ROOT, "recipes", "SpeechCommands", "KS", "train.py")
    }
    command = shlex.split(lines[1])
    assert command[0] == sys.executable
    assert command[2] == os.path.join(REPOSITORY_ROOT, "recipes", "SpeechCommands", "KS", "hparams", "superb_ks.yaml")
    options = dict(argument[2:].split("=", 1) for argument in command[3:])
    root = spec_dict["output_root"]
    assert json.loads(options["output_folder"]) == os.path.join(root, "KS", "another")
    assert json.loads(options["upstream_source"]) == new_source
    assert json.loads(options["test_condition_names"]) == CONDITIONS
    assert json.loads(options["lr"]) == 0.01
    assert not os.path.exists(os.path.join(root, "KS", "another"))  # nothing ran


def write_results(root, task, upstream, values, metric, **extra):
    folder = os.path.join(root, task, upstream)
    os.makedirs(folder)
    content = {
        "task": task,
        "results": {condition: {metric: value, "checkpoint": "CKPT+x"} for condition, value in values.items()},
        "provenance": {"recipe": task, "lr": 0.1, "finished": "2026-12-02T00:00:00+00:00"},
        **extra,
    }
    with open(os.path.join(folder, "results.json"), "w", encoding="utf-8") as fout:
        json.dump(content, fout)


def test_orientation_ranks_degradation_and_score_on_hand_made_results(tmp_path):
    root = str(tmp_path)
    # KS accuracy (fraction, higher better), PR PER (percent, lower better), SE with its own primary metric
    write_results(root, "KS", "a", {"clean": 0.90, "snr5": 0.45}, "accuracy")
    write_results(root, "KS", "b", {"clean": 0.80, "snr5": 0.60}, "accuracy")
    write_results(root, "PR", "a", {"clean": 10.0, "snr5": 30.0}, "PER")
    write_results(root, "PR", "b", {"clean": 20.0, "snr5": 30.0}, "PER")
    write_results(
        root, "SE", "a", {"clean": 2.0, "snr5": 3.0}, "STOI_like", primary_metric="STOI_like", higher_is_better=False
    )
    # SE/b never ran: missing
    spec = spec_from_dict(
        {
            "output_root": root,
            "mode": "report",
            "upstreams": {"a": "/m/a", "b": "/m/b"},
            "tasks": ["KS", "PR", "SE"],
            "conditions": ["clean", "snr5"],
        }
    )
    code, report = run_report(spec)
    assert code == 0
    ks, pr, se = (report["tasks"][name] for name in ("KS", "PR", "SE"))
    assert (se["metric"], se["higher_is_better"]) == ("STOI_like", False)  # results.json wins over the registry
    # degradation, positive = worse
    assert ks["cells"]["a"]["degradation"]["snr5"] == pytest.approx(50.0)
    assert ks["cells"]["b"]["degradation"]["snr5"] == pytest.approx(25.0)
    assert pr["cells"]["a"]["degradation"]["snr5"] == pytest.approx(200.0)
    assert pr["cells"]["b"]["degradation"]["snr5"] == pytest.approx(50.0)
    assert se["cells"]["a"]["degradation"]["snr5"] == pytest.approx(50.0)  # lower is better: 2 -> 3 is worse
    assert se["cells"]["b"]["status"] == "missing"
    summary = report["summary"]
    # clean: KS a 90 > b 80; PR oriented 100-10=90 > 100-20=80; SE only a -> rank 1
    assert summary["clean"]["a"]["ranks"] == {"KS": 1.0, "PR": 1.0, "SE": 1.0}
    assert summary["clean"]["b"]["ranks"] == {"KS": 2.0, "PR": 2.0}
    assert (summary["clean"]["a"]["mean_rank"], summary["clean"]["b"]["mean_rank"]) == (1.0, 2.0)
    assert summary["clean"]["b"]["tasks"] == 2
    # snr5: KS b 60 > a 45; PR tie at 70 -> 1.5 each
    assert summary["snr5"]["a"]["ranks"] == {"KS": 2.0, "PR": 1.5, "SE": 1.0}
    assert summary["snr5"]["b"]["mean_rank"] == pytest.approx(1.25)
    # score: per task [low, high] over the report's oriented values. KS [45, 90], PR [70, 90], SE [-3, -2]
    assert summary["clean"]["a"]["score"] == pytest.approx(1000.0)
    assert summary["clean"]["b"]["score"] == pytest.approx(1000 * ((80 - 45) / 45 + (80 - 70) / 20) / 2)
    assert summary["snr5"]["a"]["score"] == pytest.approx(1000 * (0 + 0 + 0) / 3)
    # the SE table and the markdown show the missing pair
    rows = list(csv.reader(Path(os.path.join(root, "report", "SE.csv")).read_text().splitlines()))
    assert rows[2] == ["b", "missing", "missing"]
    markdown = Path(os.path.join(root, "report", "report.md")).read_text()
    assert "| b | missing | missing |" in markdown
    assert "| a | 90.00 | 45.00 |" in markdown and "| a | 10.00 | 30.00 |" in markdown  # KS in %, PER as is
    # spec references replace the report's own bounds
    spec.score_references = {"KS": [0.0, 100.0]}
    assert collect(spec)["summary"]["clean"]["b"]["score"] == pytest.approx(1000 * (80 / 100 + (80 - 70) / 20) / 2)


def test_plots_share_one_colour_scale_show_layer_weights_and_report_uses_relative_paths(tmp_path):
    from PIL import Image

    root = str(tmp_path / "out")
    # a tie at snr5 (teacher == student), one SNR only, and very different degradation ranges per upstream
    write_results(root, "KS", "teacher", {"clean": 0.90, "snr5": 0.60}, "accuracy", layer_weights=[0.1, 0.2, 0.7])
    write_results(root, "KS", "student", {"clean": 0.80, "snr5": 0.60}, "accuracy", layer_weights=[0.5, 0.5])
    write_results(root, "PR", "teacher", {"clean": 10.0, "snr5": 11.0}, "PER")
    write_results(root, "PR", "student", {"clean": 10.0, "snr5": 40.0}, "PER")
    spec = spec_from_dict(
        {
            "output_root": root,
            "mode": "report",
            "upstreams": {"teacher": str(tmp_path / "models" / "teacher"), "student": "owner/student"},
            "tasks": ["KS", "PR"],
            "conditions": ["clean", "snr5"],
        }
    )
    code, report = run_report(spec)
    assert code == 0
    folder = Path(root, "report")
    # one colour scale (the largest |degradation|: PR student 300 %) in every upstream's heat map
    descriptions = {
        name: Image.open(folder / f"degradation_{name}.png").info["Description"] for name in ("teacher", "student")
    }
    assert descriptions["teacher"] == descriptions["student"] == "degradation colour scale: -300 to 300 %"
    assert report["files"]["heatmap_limit"] == pytest.approx(300.0)
    # KS's chance level is in the report data, the layer weights have their plot
    assert report["tasks"]["KS"]["chance"] == pytest.approx(1 / 12) and report["tasks"]["PR"]["chance"] is None
    assert report["files"]["layer_weights"] == "layer_weights.png" and (folder / "layer_weights.png").is_file()
    assert report["tasks"]["KS"]["cells"]["teacher"]["layer_weights"] == [0.1, 0.2, 0.7]
    markdown = (folder / "report.md").read_text()
    assert str(tmp_path) not in markdown  # every path relative to the report's folder
    assert "`../../models/teacher`" in markdown and "`owner/student`" in markdown and "| ../KS/teacher |" in markdown


def test_spec_errors_name_the_key(tmp_path):
    good = {"output_root": str(tmp_path), "upstreams": {"a": "/m/a"}, "tasks": ["KS"]}
    with pytest.raises(SpecError, match="Unknown task 'XX'"):
        spec_from_dict(dict(good, tasks=["XX"]), "s.yaml")
    with pytest.raises(SpecError, match=r"overrides.KS.*output_folder"):
        spec_from_dict(dict(good, overrides={"KS": {"output_folder": "/x"}}), "s.yaml")
    with pytest.raises(SpecError, match=r"`data` has entries for \['PR'\]"):
        spec_from_dict(dict(good, data={"PR": {}}), "s.yaml")
    with pytest.raises(SpecError, match="upstream 'a' needs a source"):
        spec_from_dict(dict(good, upstreams={"a": {"kind": "hf"}}), "s.yaml")
    with pytest.raises(SpecError, match="unknown keys"):
        spec_from_dict(dict(good, outputs="x"), "s.yaml")
    spec = spec_from_dict(
        dict(good, upstreams={"a": {"source": "/m/a", "kind": "student", "include_predictions": False}})
    )
    assert spec.pairs()[0].overrides == {
        "upstream_source": "/m/a",
        "upstream_kind": "student",
        "upstream_include_predictions": False,
        "output_folder": os.path.join(str(tmp_path), "KS", "a"),
    }


def test_each_task_gets_the_spec_conditions_its_recipe_defines(tmp_path):
    """One condition list for KS and SE: SE's release condition `official` reaches SE only; a list that
    names nothing of a task is refused, naming the task and what its recipe has."""
    content = {
        "output_root": str(tmp_path),
        "upstreams": {"a": "/m/a"},
        "tasks": ["KS", "SE"],
        "conditions": ["official", "clean", "snr5"],
    }
    spec = spec_from_dict(content, "s.yaml")
    names = {pair.task.name: pair.overrides["test_condition_names"] for pair in spec.pairs()}
    assert names == {"KS": ["clean", "snr5"], "SE": ["official", "clean", "snr5"]}
    with pytest.raises(SpecError, match=r"names no condition of KS.*'clean', 'snr20'"):
        spec_from_dict(dict(content, conditions=["official"]), "s.yaml")


# ------------------------------------------------------------------------------------------------
# Nothing in a spec is dropped silently (duplicate keys, unknown conditions)
# ------------------------------------------------------------------------------------------------


def _spec_file(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, where, key, lines",
    [
        # the case: an upstream named twice keeps only the last with plain YAML
        ("upstreams:\n  robust: /m/a\n  plain: /m/b\n  robust: /m/c\ntasks: [KS]\n", "upstreams", "robust", (2, 4)),
        # the same mechanism reached another way: a task's overrides, and the top level
        (
            "upstreams: {a: /m/a}\ntasks: [KS]\noverrides:\n  KS: {lr: 0.1}\n  KS: {lr: 0.2}\n",
            "overrides",
            "KS",
            (4, 5),
        ),
        (
            "upstreams: {a: /m/a}\ntasks: [KS]\nconditions: [clean]\nconditions: [snr5]\n",
            "the spec",
            "conditions",
            (3, 4),
        ),
    ],
)
def test_a_key_given_twice_is_refused_naming_it(tmp_path, text, where, key, lines):
    from robustdistiller.report import load_spec
    from tests.conftest import folder_snapshot

    path = _spec_file(tmp_path, f"output_root: {tmp_path / 'out'}\n" + text)
    first, second = (line + 1 for line in lines)  # output_root is line 1
    assert isinstance(yaml.safe_load(Path(path).read_text()), dict)  # plain YAML accepts it (and drops an entry)
    before = folder_snapshot(str(tmp_path))
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert f"{path}: `{where}` names '{key}' twice (lines {first} and {second})" in str(error.value)
    assert folder_snapshot(str(tmp_path)) == before
    assert not (tmp_path / "out").exists()
    assert report_main([path, "--mode", "print"]) != 0  # the command line refuses it too


@pytest.mark.parametrize(
    "conditions, unknown", [(["clean", "snr55"], ["snr55"]), (["snr55", "official", "Reverb"], ["snr55", "Reverb"])]
)
def test_a_condition_no_task_defines_is_refused_naming_it(tmp_path, conditions, unknown):
    """Before: `snr55` vanished from every table (each task kept only the names its recipe defines)."""
    from tests.conftest import folder_snapshot
    from robustdistiller.downstream.tasks import get_task

    content = {
        "output_root": str(tmp_path / "out"),
        "upstreams": {"a": "/m/a"},
        "tasks": ["KS", "SE"],
        "conditions": conditions,
    }
    defined = set(get_task("KS").condition_names) | set(get_task("SE").condition_names)
    assert [name for name in conditions if name not in defined] == unknown  # the definition of "unknown"
    path = _spec_file(tmp_path, yaml.safe_dump(content))
    before = folder_snapshot(str(tmp_path))
    with pytest.raises(SpecError) as error:
        spec_from_dict(content, "s.yaml")
    message = str(error.value)
    assert f"`conditions` names {unknown}, which no task of the spec defines" in message
    assert "KS: clean, snr20" in message  # what the recipes do define
    with pytest.raises(SpecError, match=unknown[0]):  # from a file as well
        from robustdistiller.report import load_spec

        load_spec(path)
    assert folder_snapshot(str(tmp_path)) == before
    with pytest.raises(SpecError, match=r"lists \['clean'\] more than once"):
        spec_from_dict(dict(content, conditions=["clean", "clean"]), "s.yaml")
