"""robustdistiller.runs.workers: DataLoader workers capped at the CPU count."""

import logging

import speechbrain as sb
import torch

from robustdistiller.runs import workers
from robustdistiller.runs.workers import available_cpus, cap_num_workers


def test_cap_num_workers_lowers_to_cpu_count_and_says_so_once(caplog, monkeypatch):
    monkeypatch.setattr(workers, "_REPORTED_WORKER_CAPS", set())
    requested = {"batch_size": 4, "num_workers": 8}
    with caplog.at_level(logging.INFO, logger="robustdistiller.runs.workers"):
        assert cap_num_workers(requested, cpus=2) == {"batch_size": 4, "num_workers": 2}
        assert cap_num_workers(requested, cpus=2)["num_workers"] == 2
    assert requested["num_workers"] == 8, "the YAML's options must not be changed in place"
    lines = [record.getMessage() for record in caplog.records if "num_workers" in record.getMessage()]
    assert lines == ["num_workers=8 lowered to 2, the CPUs available to this run."]
    assert cap_num_workers({"num_workers": 1}, cpus=2) == {"num_workers": 1}
    assert cap_num_workers({"batch_size": 1}, cpus=2) == {"batch_size": 1}
    assert cap_num_workers(None) == {}


class _ListDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return {"id": str(index)}


def _loader_workers(brain_class, **hparams):
    brain = sb.Brain.__new__(brain_class)
    sb.Brain.__init__(brain, modules={}, hparams=hparams, run_opts={"device": "cpu"})
    loader = brain.make_dataloader(_ListDataset(), sb.Stage.VALID, batch_size=1, num_workers=available_cpus() + 7)
    return loader.num_workers


def test_recipe_brains_cap_loader_workers():
    from robustdistiller.distill.brain import DistillationBrain
    from robustdistiller.downstream.brain import DownstreamBrain
    from robustdistiller.dpwavlm.brain import DPWavLMBrain

    for brain_class in (DistillationBrain, DownstreamBrain, DPWavLMBrain):
        assert _loader_workers(brain_class, seed=0) == available_cpus(), brain_class.__name__
