"""The ready spec for the authors' released checkpoints: it parses, names the four files, and each of its
upstreams loads from a tiny stand-in written under the released file name and format."""

import os

import torch

from robustdistiller.downstream.upstream import FrozenUpstream
from robustdistiller.dpwavlm import DPWavLM, save_dphubert_checkpoint
from robustdistiller.dpwavlm.model import tiny_hubert_config
from robustdistiller.export.s3prl import student_to_s3prl
from robustdistiller.models.student import DistillerStudent, build_student_config
from robustdistiller.report import load_spec
from tests.conftest import REPOSITORY_ROOT

SPEC = os.path.join(REPOSITORY_ROOT, "recipes", "report_released_checkpoints.yaml")
RELEASED = {
    "rd_hubert": "checkpoints/rd_hubert.ckpt",
    "rd_wavlm": "checkpoints/rd_wavlm.ckpt",
    "rd_rhubert": "checkpoints/rd_rhubert.ckpt",
    "rddpwavlm": "checkpoints/RDDPWavLM-sp0.75.pth",
}


def test_spec_names_the_released_files_and_their_teachers():
    spec = load_spec(SPEC)
    sources = {name: options["upstream_source"] for name, options in spec.upstreams.items()}
    for name, path in RELEASED.items():
        assert sources[name] == path and spec.upstreams[name]["upstream_kind"] == "student"
    assert sources["wavlm-base-plus"] == "microsoft/wavlm-base-plus"
    assert sources["hubert-base"] == "facebook/hubert-base-ls960"
    assert [task.name for task in spec.tasks] == ["KS", "IC", "ER", "SID", "PR", "ASR"]


def test_every_released_upstream_loads_from_a_stand_in(tmp_path, monkeypatch):
    torch.manual_seed(0)
    config = build_student_config(
        hidden_size=32, num_attention_heads=2, intermediate_size=64, conv_dim=[48] * 7, num_conv_pos_embedding_groups=4
    )
    student = DistillerStudent(config, target_layers=(4, 8, 12)).eval()
    (tmp_path / "checkpoints").mkdir()
    for name in ("rd_hubert", "rd_wavlm", "rd_rhubert"):
        student_to_s3prl(student, str(tmp_path / RELEASED[name]))
    save_dphubert_checkpoint(tmp_path / RELEASED["rddpwavlm"], DPWavLM(tiny_hubert_config(num_layers=2)).eval())
    monkeypatch.chdir(tmp_path)  # the spec's paths are relative to the folder the command runs from
    spec = load_spec(SPEC)
    wavs, wav_lens = torch.randn(2, 8000), torch.tensor([1.0, 0.6])
    for name in RELEASED:
        options = spec.upstreams[name]
        upstream = FrozenUpstream(options["upstream_source"], kind=options["upstream_kind"])
        features, frame_mask = upstream(wavs, wav_lens)
        assert features.shape[0] == 2 and torch.isfinite(features).all(), name
        assert frame_mask.sum(dim=1).tolist()[1] < frame_mask.sum(dim=1).tolist()[0]
