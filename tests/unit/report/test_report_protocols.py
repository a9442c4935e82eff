"""The report's test-protocol dimension: ``test_protocol`` in a spec runs every pair under each preset (in its
own folder, with ``--test_protocol``) and the report has one table per task and a summary per protocol."""

import json
import os
from pathlib import Path

import pytest

from robustdistiller.report import SpecError, run_report, spec_from_dict


def write_results(root, task, upstream, values):
    folder = os.path.join(root, task, upstream)
    os.makedirs(folder)
    content = {
        "task": task,
        "results": {condition: {"accuracy": value, "checkpoint": "CKPT+x"} for condition, value in values.items()},
        "provenance": {"recipe": task},
    }
    Path(folder, "results.json").write_text(json.dumps(content), encoding="utf-8")


def test_each_protocol_has_its_pairs_tables_and_summary(tmp_path):
    root = str(tmp_path)
    write_results(root, "KS", "a", {"clean": 0.9, "snr5": 0.5})
    write_results(os.path.join(root, "huang2022"), "KS", "a", {"clean": 0.9, "2dis": 0.6, "fsd50k": 0.7})
    spec = spec_from_dict(
        {
            "output_root": root,
            "mode": "report",
            "upstreams": {"a": "/m/a"},
            "tasks": ["KS"],
            "test_protocol": ["robustdistiller", "huang2022"],
        }
    )
    pairs = spec.pairs()
    assert [pair.label for pair in pairs] == ["KS/a", "huang2022/KS/a"]
    assert "test_protocol" not in pairs[0].overrides  # the default: the folders and options of earlier reports
    assert pairs[1].overrides["test_protocol"] == "huang2022"
    assert pairs[1].output_folder == os.path.join(root, "huang2022", "KS", "a")
    code, report = run_report(spec)
    assert code == 0
    assert report["tasks"]["KS"]["cells"]["a"]["values"] == {"clean": 0.9, "snr5": 0.5}
    huang = report["protocols"]["huang2022"]
    assert huang["test_protocol"] == "huang2022"
    assert huang["tasks"]["KS"]["cells"]["a"]["values"] == {"clean": 0.9, "2dis": 0.6, "fsd50k": 0.7}
    assert huang["summary"]["2dis"]["a"]["ranks"] == {"KS": 1.0}
    markdown = Path(root, "report", "report.md").read_text(encoding="utf-8")
    assert "## Test protocol `huang2022`" in markdown and "| a | 90.00 | 60.00 | 70.00 |" in markdown
    assert (
        Path(root, "report", "huang2022_KS.csv").is_file() and Path(root, "report", "huang2022_summary.csv").is_file()
    )


def test_spec_conditions_and_protocols_are_checked_per_protocol(tmp_path):
    good = {"output_root": str(tmp_path), "upstreams": {"a": "/m/a"}, "tasks": ["KS"]}
    spec = spec_from_dict(dict(good, test_protocol="srb", conditions=["gnoise_snr0", "rir_bin1"]))
    assert spec.pairs()[0].overrides["test_condition_names"] == ["gnoise_snr0", "rir_bin1"]
    with pytest.raises(SpecError, match="test_protocol"):
        spec_from_dict(dict(good, test_protocol="chime"))
    with pytest.raises(SpecError, match="2dis"):  # a huang2022 condition under the default protocol only
        spec_from_dict(dict(good, conditions=["2dis"]))
