"""The shared downstream framework: upstream kinds, frozen upstreams, weighted sum, test conditions."""

from pathlib import Path
import json
import os

import pytest
import torch

from robustdistiller.downstream.data import paired_condition_key
from robustdistiller.downstream import (
    DEFAULT_TEST_CONDITIONS,
    AudioPipeline,
    FrozenUpstream,
    WeightedLayerSum,
    build_corruptors,
    masked_mean,
    prepare_corruption_lists,
    write_condition_results,
)
from robustdistiller.export.errors import ExportError
from robustdistiller.export.loading import load_student
from robustdistiller.export.student_folder import export_student
from robustdistiller.export.s3prl import student_to_s3prl


@pytest.fixture(scope="module")
def upstream_sources(trained_run, tiny_teacher_folder, tmp_path_factory):
    """One source of every upstream kind, all holding the same trained student except the HF one."""
    folder = tmp_path_factory.mktemp("upstreams")
    exported = str(folder / "exported")
    export_student(trained_run, exported)
    student, _ = load_student(trained_run)
    s3prl_file = str(folder / "student_s3prl.ckpt")
    student_to_s3prl(student, s3prl_file)
    return {
        "output_folder": trained_run,
        "save_folder": os.path.join(trained_run, "save"),
        "exported": exported,
        "s3prl": s3prl_file,
        "hf": tiny_teacher_folder,
    }


def speech_like(seconds, seed):
    generator = torch.Generator().manual_seed(seed)
    time = torch.arange(int(seconds * 16000)) / 16000
    return 0.1 * torch.sin(2 * torch.pi * 150 * time) + 0.01 * torch.randn(time.shape, generator=generator)


def test_every_upstream_kind_loads_frozen_and_students_agree(upstream_sources):
    wavs = torch.stack([speech_like(1.0, 0), torch.cat([speech_like(0.6, 1), torch.zeros(6400)])])
    wav_lens = torch.tensor([1.0, 0.6])
    features = {}
    for name, source in upstream_sources.items():
        upstream = FrozenUpstream(source)
        assert upstream.kind == ("hf" if name == "hf" else "student"), name
        upstream.train()  # a parent module or Brain.fit switching modes must not matter
        assert not upstream.training and not upstream.model.training
        assert not any(parameter.requires_grad for parameter in upstream.parameters())
        layers, frame_mask = upstream(wavs, wav_lens)
        assert not layers.requires_grad
        assert layers.shape[:2] == (2, upstream.num_layers) and layers.shape[-1] == upstream.hidden_size
        assert frame_mask.sum(dim=1).tolist() == [49, 29]
        features[name] = layers
    # the same student through four containers gives the same features (s3prl has no per-utterance norm
    # flag; the loader leaves the plain HF computation, which differs only on the padded item)
    for name in ("save_folder", "exported"):
        torch.testing.assert_close(features[name], features["output_folder"], atol=1e-5, rtol=0)
    torch.testing.assert_close(features["s3prl"][0], features["output_folder"][0], atol=1e-5, rtol=0)
    assert features["hf"].shape[1] == 13 and features["output_folder"].shape[1] == 6  # 3 hidden + 3 heads


def test_student_without_prediction_layers(upstream_sources):
    upstream = FrozenUpstream(upstream_sources["exported"], include_predictions=False)
    assert upstream.num_layers == 3


def test_bad_upstream_sources_are_named(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        FrozenUpstream(str(tmp_path / "missing_model"))
    with pytest.raises(ValueError, match="kind"):
        FrozenUpstream(str(tmp_path), kind="wav2vec")


def test_weighted_sum_is_a_convex_combination_and_only_it_learns():
    weighted_sum = WeightedLayerSum(4)
    layers = torch.randn(2, 4, 5, 3)
    with torch.no_grad():
        weighted_sum.weights.copy_(torch.tensor([0.0, 10.0, 0.0, 0.0]))
    # a large weight on layer 1 selects it
    torch.testing.assert_close(weighted_sum(layers), layers[:, 1], atol=1e-3, rtol=0)
    assert abs(sum(weighted_sum.layer_weights()) - 1.0) < 1e-6
    weighted_sum(layers).sum().backward()
    assert weighted_sum.weights.grad is not None and weighted_sum.weights.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="expects 4 layers, got 3"):
        weighted_sum(layers[:, :3])


def test_masked_mean_ignores_padding():
    features = torch.randn(2, 6, 3)
    frame_mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    pooled = masked_mean(features, frame_mask)
    torch.testing.assert_close(pooled[1], features[1, :4].mean(dim=0))
    torch.testing.assert_close(pooled[0], features[0].mean(dim=0))


def corruption_hparams(mini_corpus, save_folder, **extra):
    hparams = {
        "save_folder": str(save_folder),
        "seed": 1,
        "skip_prep": False,
        "test_musan_folder": mini_corpus["musan"],
        "test_musan_subsets": ["music", "speech"],
        "test_noise_folders": [],
        "test_rir_folder": mini_corpus["rirs"],
        "test_rir_format": "rirs_noises",
        "test_rirs_noises_subsets": ["simulated"],
        "test_conditions": DEFAULT_TEST_CONDITIONS,
        "train_corruption": False,
    }
    hparams.update(extra)
    return hparams


def test_test_lists_are_disjoint_from_distillation_lists(mini_corpus, tmp_path):
    from robustdistiller.data.prepare.noise import prepare_noise
    from robustdistiller.data.prepare.rirs import prepare_rirs

    lists = prepare_corruption_lists(corruption_hparams(mini_corpus, tmp_path))
    test_noise, test_rirs = lists["test"]
    distill_noise = prepare_noise(str(tmp_path), musan_folder=mini_corpus["musan"], musan_subsets=("noise",))
    distill_rirs = prepare_rirs(str(tmp_path), mini_corpus["rirs"], rirs_noises_subsets=("real",))

    def files(csv_file):
        return {line.split(",")[2] for line in open(csv_file).read().splitlines()[1:]}

    assert files(test_noise) and files(test_rirs)
    assert not files(test_noise) & files(distill_noise)
    assert not files(test_rirs) & files(distill_rirs)


def test_corrupted_test_audio_is_identical_for_every_upstream_and_run(mini_corpus, tmp_path):
    hparams = corruption_hparams(mini_corpus, tmp_path)
    prepare_corruption_lists(hparams)
    wav_file = tmp_path / "utterance.wav"
    import soundfile

    soundfile.write(wav_file, speech_like(1.5, 3).numpy(), 16000)
    outputs = {}
    for run in range(2):  # two independent builds, as two upstreams' runs would do
        test_corruptor, train_corruptor, conditions = build_corruptors(hparams)
        assert train_corruptor is None and list(conditions) == list(DEFAULT_TEST_CONDITIONS)
        for name, spec in conditions.items():
            pipeline = AudioPipeline(
                16000, test_corruptor, spec["condition"], spec.get("snr"), key_prefix=paired_condition_key(spec)
            )
            outputs.setdefault(name, []).append(pipeline("spk1_utt1", str(wav_file), 0, -1))
    clean = outputs["clean"][0]
    for name, (first, second) in outputs.items():
        assert torch.equal(first, second), name
        if name != "clean":
            assert not torch.allclose(first[: clean.shape[0]], clean), name
    # the SNR is the one asked for: noise power relative to the (scaled) clean speech
    noise_20, noise_0 = outputs["snr20"][0] - clean * 0.9090909, outputs["snr0"][0] - clean * 0.5
    assert (noise_0.pow(2).mean() / noise_20.pow(2).mean()) > 10
    # paired conditions: snr20 ... snr0 add the same noise segment, only scaled (an SNR curve differs by
    # the SNR alone); the mixture scale of AddNoise is 1 / (1 + 10^(-SNR/20)) for speech and noise alike
    for name in ("snr15", "snr10", "snr5", "snr0"):
        snr = DEFAULT_TEST_CONDITIONS[name]["snr"]
        noise = outputs[name][0] - clean / (1 + 10 ** (-snr / 20))
        cosine = torch.nn.functional.cosine_similarity(noise, noise_20, dim=0)
        assert cosine > 0.999, (name, float(cosine))


def test_condition_test_sets_are_paired_by_kind_of_corruption():
    keys = {name: paired_condition_key(spec) for name, spec in DEFAULT_TEST_CONDITIONS.items()}
    assert len({keys[name] for name in ("snr20", "snr15", "snr10", "snr5", "snr0")}) == 1
    assert len({keys["snr10"], keys["reverb"], keys["noise_reverb"], keys["clean"]}) == 4


def test_student_states_follow_s3prl_layer0_convention(upstream_sources):
    """State 0 of a student is the projection output before the positional conv and the encoder
    LayerNorm (s3prl's distiller ``feat_final``), padded frames zeroed; the rest are unchanged."""
    wavs = torch.stack([speech_like(1.0, 0), torch.cat([speech_like(0.6, 1), torch.zeros(6400)])])
    wav_lens = torch.tensor([1.0, 0.6])
    s3prl_states = FrozenUpstream(upstream_sources["exported"])
    hf_states = FrozenUpstream(upstream_sources["exported"], student_layer0="encoder_input")
    assert s3prl_states.student_layer0 == "projection" and s3prl_states.num_layers == hf_states.num_layers == 6
    ours, frame_mask = s3prl_states(wavs, wav_lens)
    theirs, _ = hf_states(wavs, wav_lens)
    torch.testing.assert_close(ours[:, 1:], theirs[:, 1:])
    student = s3prl_states.model
    with torch.no_grad():
        features, mask = student.extract_cnn_features(wavs, wav_lens)
        projection = student.backbone.feature_projection(features).masked_fill(~mask.unsqueeze(-1), 0.0)
    torch.testing.assert_close(ours[:, 0], projection)
    assert not torch.allclose(ours[:, 0], theirs[:, 0])
    assert torch.count_nonzero(ours[1, 0][~frame_mask[1]]) == 0
    assert s3prl_states.identity()["student_layer0"] == "projection"
    assert FrozenUpstream(upstream_sources["hf"]).student_layer0 == "encoder_input"  # teachers: HF's states


def test_condition_subset_and_missing_lists(mini_corpus, tmp_path):
    hparams = corruption_hparams(
        mini_corpus, tmp_path, test_rir_folder=None, test_condition_names=["clean", "snr5", "reverb"]
    )
    prepare_corruption_lists(hparams)
    _, _, conditions = build_corruptors(hparams)
    assert list(conditions) == ["clean", "snr5"]  # reverb needs a RIR list
    with pytest.raises(ValueError, match="snr3"):
        build_corruptors({**hparams, "test_condition_names": ["snr3"]})


def test_training_on_corrupted_data_uses_its_own_lists(mini_corpus, tmp_path):
    hparams = corruption_hparams(
        mini_corpus,
        tmp_path,
        train_corruption=True,
        train_musan_folder=mini_corpus["musan"],
        train_musan_subsets=["noise"],
        train_rir_folder=mini_corpus["rirs"],
        train_rirs_noises_subsets=["real"],
        train_condition_probs={"clean": 0.0, "noise": 1.0},
    )
    lists = prepare_corruption_lists(hparams)
    assert os.path.basename(lists["train"][0]) == "train_noise.csv"
    _, train_corruptor, _ = build_corruptors(hparams)
    assert train_corruptor.condition_probs["noise"] == 1.0
    waveform = speech_like(1.0, 4)
    noisy = train_corruptor(waveform, key="a").noisy
    assert not torch.allclose(noisy, waveform)


def test_results_files(tmp_path):
    results = {"clean": {"accuracy": 0.9, "loss": 0.3}, "snr0": {"accuracy": 0.5, "loss": 1.2}}
    write_condition_results(str(tmp_path), "KS", results, ["accuracy"], layer_weights=[0.25, 0.75])
    content = json.loads(Path(tmp_path / "results.json").read_text())
    assert content["results"]["snr0"]["accuracy"] == 0.5 and content["layer_weights"] == [0.25, 0.75]
    table = Path(tmp_path / "results.md").read_text()
    assert "| snr0 | 0.5 |" in table and "1: 0.750" in table
