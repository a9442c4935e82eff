"""Reliability of model loading and of inputs the models cannot encode.

Loading: a damaged or wrong model folder fails when it is *loaded*, with an error naming the folder or
file and what was expected (not at the first forward pass, not with random weights).

Short audio: the CNN needs 400 samples (25 ms at 16 kHz) for one frame. A single utterance, or a batch
whose every item, is shorter raises ``ValueError`` before the CNN runs; a short item among longer ones
gets zero valid frames, finite features, and changes neither the other items' outputs nor the loss.
"""

import os
import shutil

import numpy as np
import pytest
import soundfile
import torch
from transformers import BertConfig, BertModel

from robustdistiller.downstream import FrozenUpstream
from robustdistiller.export.errors import ExportError
from robustdistiller.export.loading import load_student
from robustdistiller.export.student_folder import export_student
from robustdistiller.inference.interface import CNN_RECEPTIVE_FIELD, EncoderInterface, cnn_receptive_field
from robustdistiller.distill.losses import distillation_loss
from robustdistiller.models.student import DistillerStudent, build_student_config
from robustdistiller.models.teacher import (
    SSL_MODEL_TYPES,
    FrozenTeacher,
    TeacherSourceError,
    load_ssl_model,
    random_teacher_config,
    save_random_teacher,
)

pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")

TINY = dict(
    hidden_size=32,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=[24] * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)
NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def tiny_student(seed=0, per_utterance_norm=False, **overrides):
    torch.manual_seed(seed)
    config = build_student_config(**TINY, **overrides)
    return DistillerStudent(
        config, target_layers=(4, 8, 12), target_size=64, per_utterance_norm=per_utterance_norm
    ).eval()


def truncate(path, keep=0.5):
    with open(path, "r+b") as fout:
        fout.truncate(int(os.path.getsize(path) * keep))


def save_bert(folder):
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    model.save_pretrained(folder)
    return str(folder)


def padded(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    wavs = torch.zeros(len(lengths), max(lengths))
    for index, length in enumerate(lengths):
        wavs[index, :length] = 0.1 * torch.randn(length, generator=generator)
    return wavs, torch.tensor(lengths, dtype=torch.float) / max(lengths)


@pytest.fixture(scope="module")
def exported_folder(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("exported") / "student")
    export_student(tiny_student(per_utterance_norm=True), folder)
    return folder


@pytest.fixture(scope="module")
def interface(exported_folder, tmp_path_factory):
    return EncoderInterface.from_hparams(source=exported_folder, savedir=str(tmp_path_factory.mktemp("savedir")))


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.0001])
def test_truncated_teacher_weights_fail_at_load_naming_the_file(tmp_path, keep):
    folder = save_random_teacher(str(tmp_path / "teacher"), model_type="wavlm")
    truncate(os.path.join(folder, "model.safetensors"), keep)
    expected = f"'{os.path.join(folder, 'model.safetensors')}' cannot be read (truncated or damaged"
    with pytest.raises(TeacherSourceError) as error:
        load_ssl_model(folder)
    assert expected in str(error.value)
    with pytest.raises(TeacherSourceError, match="truncated or damaged"):
        FrozenTeacher(folder)
    with pytest.raises(TeacherSourceError, match="truncated or damaged"):  # as a downstream upstream
        FrozenUpstream(folder)


def test_truncated_torch_weights_fail_at_load(tmp_path):
    folder = str(tmp_path / "teacher")
    torch.manual_seed(0)
    from transformers import HubertModel

    model = HubertModel(random_teacher_config("hubert"))
    model.config.save_pretrained(folder)  # an older-style folder: config.json + pytorch_model.bin
    torch.save(model.state_dict(), os.path.join(folder, "pytorch_model.bin"))
    load_ssl_model(folder)  # intact: loads
    truncate(os.path.join(folder, "pytorch_model.bin"))
    with pytest.raises(TeacherSourceError, match="pytorch_model.bin' cannot be read"):
        load_ssl_model(folder)


def test_truncated_exported_student_fails_at_load_naming_the_file(tmp_path, exported_folder):
    folder = str(tmp_path / "exported")
    shutil.copytree(exported_folder, folder)
    truncate(os.path.join(folder, "model.safetensors"))
    with pytest.raises(ExportError) as error:
        load_student(folder)
    assert f"'{os.path.join(folder, 'model.safetensors')}' cannot be read (truncated or damaged" in str(error.value)
    with pytest.raises(ExportError, match="truncated or damaged"):  # as a downstream upstream
        FrozenUpstream(folder)


def test_a_bert_folder_is_no_teacher_or_upstream(tmp_path):
    folder = save_bert(tmp_path / "bert")
    expected = f"'{folder}' holds a bert model; expected a speech SSL model (wavlm, hubert, wav2vec2"
    for load in (load_ssl_model, FrozenTeacher, FrozenUpstream):
        with pytest.raises(TeacherSourceError) as error:
            load(folder)
        assert expected in str(error.value), load
    # config.json is read before the weights: the same error with damaged weights
    truncate(os.path.join(folder, "model.safetensors"), 0.3)
    with pytest.raises(TeacherSourceError, match="holds a bert model"):
        load_ssl_model(folder)


def test_an_exported_folder_with_a_foreign_config_is_refused(tmp_path, exported_folder):
    folder = str(tmp_path / "exported")
    shutil.copytree(exported_folder, folder)
    shutil.copy(os.path.join(save_bert(tmp_path / "bert"), "config.json"), os.path.join(folder, "config.json"))
    with pytest.raises(ExportError, match=r"holds a bert model; expected an exported student backbone \(hubert\)"):
        load_student(folder)


def test_weights_of_another_model_are_not_replaced_by_random_ones(tmp_path):
    folder = save_random_teacher(str(tmp_path / "wavlm"), model_type="wavlm")
    shutil.copy(
        os.path.join(save_bert(tmp_path / "bert"), "model.safetensors"), os.path.join(folder, "model.safetensors")
    )
    with pytest.raises(
        TeacherSourceError, match=r"do not fit its config.json \(wavlm\): \d+ of \d+ parameters are missing"
    ):
        load_ssl_model(folder)


def test_damaged_or_missing_config(tmp_path):
    folder = save_random_teacher(str(tmp_path / "teacher"), model_type="hubert")
    with open(os.path.join(folder, "config.json"), "r+b") as fout:
        fout.truncate(40)
    with pytest.raises(TeacherSourceError, match="config.json' cannot be read"):
        load_ssl_model(folder)
    os.remove(os.path.join(folder, "config.json"))
    with pytest.raises(TeacherSourceError, match="has no config.json"):
        load_ssl_model(folder)


def test_every_accepted_model_type_loads(tmp_path):
    assert SSL_MODEL_TYPES[:3] == ("wavlm", "hubert", "wav2vec2")
    for model_type in ("wavlm", "hubert", "wav2vec2"):
        model = load_ssl_model(save_random_teacher(str(tmp_path / model_type), model_type=model_type))
        assert model.config.model_type == model_type


# ------------------------------------------------------------------------------------------------
# Audio shorter than the CNN's receptive field
# ------------------------------------------------------------------------------------------------


def test_the_receptive_field_is_400_samples():
    assert CNN_RECEPTIVE_FIELD == 400
    assert cnn_receptive_field(random_teacher_config("wavlm")) == 400
    assert cnn_receptive_field(build_student_config()) == 400
    student = tiny_student()
    assert int(student.num_frames(torch.tensor(400))) == 1 and int(student.num_frames(torch.tensor(399))) == 0


def test_encode_file_of_10_ms_names_the_file_and_the_minimum(interface, tmp_path):
    path = str(tmp_path / "click.wav")
    soundfile.write(path, 0.1 * np.random.default_rng(0).standard_normal(160), 16000)
    with pytest.raises(ValueError) as error:
        interface.encode_file(path)
    message = str(error.value)
    for expected in (path, "160 samples", "10.0 ms", "400 samples", "25.0 ms"):
        assert expected in message, expected


def test_encode_batch_of_too_short_utterances_raises(interface):
    with pytest.raises(ValueError, match="The utterance has 80 samples .* fewer than the 400 samples"):
        interface.encode_batch(torch.randn(80))
    with pytest.raises(ValueError, match="Every item of the batch of 2 is too short: the longest has 300 samples"):
        interface.encode_batch(*padded([300, 80]))


def test_encode_batch_with_one_short_item(interface):
    wavs, wav_lens = padded([16000, 80, 8000])
    out = interface.encode_batch(wavs, wav_lens)
    assert out.frame_mask.sum(dim=1).tolist() == [49, 0, 24]
    assert torch.isfinite(out.hidden_states).all() and torch.isfinite(out.predictions).all()
    without = interface.encode_batch(wavs[[0, 2]], wav_lens[[0, 2]])
    torch.testing.assert_close(out.hidden_states[[0, 2]], without.hidden_states, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.predictions[[0, 2]], without.predictions, atol=1e-5, rtol=0)


class CountCnnCalls:
    """Counts forward calls of a model's first conv layer (the start of the CNN)."""

    def __init__(self, feature_extractor):
        self.calls = 0
        self.handle = feature_extractor.conv_layers[0].register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1


@pytest.mark.parametrize("per_utterance_norm", [False, True])
def test_student_with_a_short_item(per_utterance_norm):
    student = tiny_student(per_utterance_norm=per_utterance_norm, **NO_DROPOUT)
    wavs, wav_lens = padded([16000, 8000, 80])
    with torch.no_grad():
        out = student(wavs, wav_lens)
        without = student(wavs[:2], wav_lens[:2])
    assert out.frame_lengths.tolist() == [49, 24, 0] and not out.frame_mask[2].any()
    for tensor in (out.cnn_features, out.predictions, *out.hidden_states):
        assert torch.isfinite(tensor).all()
    for before, after in zip(without.hidden_states, out.hidden_states):
        torch.testing.assert_close(after[:2], before, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.predictions[:2], without.predictions, atol=1e-5, rtol=0)


def test_too_short_batches_are_refused_before_the_cnn(tiny_teacher_folder):
    student = tiny_student()
    teacher = FrozenTeacher(tiny_teacher_folder)
    for model, feature_extractor in (
        (student, student.backbone.feature_extractor),
        (teacher, teacher.model.feature_extractor),
    ):
        counter = CountCnnCalls(feature_extractor)
        with pytest.raises(ValueError, match="399 samples"):
            model(torch.randn(1, 399))
        with pytest.raises(ValueError, match="Every item of the batch of 2 is too short"):
            model(*padded([200, 80]))
        with pytest.raises(ValueError, match="Every item of the batch of 3 is too short"):
            model(torch.randn(3, 100))  # no lengths: every item has the padded length
        assert counter.calls == 0
        model(torch.randn(1, 400))
        assert counter.calls == 1
        counter.handle.remove()


@pytest.mark.parametrize("model_type", ["wavlm", "hubert"])
@pytest.mark.parametrize("per_utterance_norm", [False, True])
def test_teacher_with_a_short_item(tmp_path, model_type, per_utterance_norm):
    folder = save_random_teacher(str(tmp_path / model_type), model_type=model_type)
    teacher = FrozenTeacher(folder, per_utterance_norm=per_utterance_norm)
    wavs, wav_lens = padded([16000, 80, 8000])
    out = teacher(wavs, wav_lens)
    without = teacher(wavs[[0, 2]], wav_lens[[0, 2]])
    assert out.frame_mask.sum(dim=1).tolist() == [49, 0, 24]
    assert torch.isfinite(out.layers).all()
    torch.testing.assert_close(out.layers[[0, 2]], without.layers, atol=1e-5, rtol=0)


def test_distillation_loss_and_gradients_stay_finite_with_a_short_item(tiny_teacher_folder):
    teacher = FrozenTeacher(tiny_teacher_folder, per_utterance_norm=True)
    student = tiny_student(per_utterance_norm=True, **NO_DROPOUT)
    wavs, wav_lens = padded([16000, 80, 12000])

    def loss_and_gradients(wavs, wav_lens):
        student.zero_grad()
        output = student(wavs, wav_lens)
        targets = teacher(wavs, wav_lens)
        loss = distillation_loss(output.predictions, targets.layers, targets.frame_mask & output.frame_mask)["loss"]
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}

    loss, gradients = loss_and_gradients(wavs, wav_lens)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(gradient).all() for gradient in gradients.values())
    reference, reference_gradients = loss_and_gradients(wavs[[0, 2]], wav_lens[[0, 2]])
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)  # the short item adds nothing
    for name, gradient in reference_gradients.items():
        torch.testing.assert_close(gradients[name], gradient, atol=1e-5, rtol=1e-4)
    student.train()  # with dropout: still finite
    torch.manual_seed(0)
    output = student(wavs, wav_lens)
    loss = distillation_loss(output.predictions, teacher(wavs, wav_lens).layers, output.frame_mask)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and all(
        torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None
    )


# ------------------------------------------------------------------------------------------------
# Every file a loader of an export reads: a damaged one is named
# ------------------------------------------------------------------------------------------------


def damaged_copy(exported_folder, tmp_path, name, keep):
    folder = str(tmp_path / "exported")
    shutil.copytree(exported_folder, folder)
    truncate(os.path.join(folder, name), keep)
    return folder


@pytest.mark.parametrize("name", ["encoder.ckpt", "prediction_expand.ckpt", "prediction_split.ckpt"])
@pytest.mark.parametrize("keep", [0.5, 0.999, 0.0001])
def test_a_truncated_weights_file_fails_from_hparams_naming_it(tmp_path, exported_folder, name, keep):
    """Before: `PytorchStreamReader failed reading zip archive: failed finding central directory`, no file."""
    from tests.conftest import folder_snapshot
    from robustdistiller.inference.interface import DamagedModelFileError

    folder = damaged_copy(exported_folder, tmp_path, name, keep)
    before = folder_snapshot(folder)
    with pytest.raises(DamagedModelFileError) as error:
        EncoderInterface.from_hparams(source=folder, savedir=str(tmp_path / "savedir"))
    # named as the exported file (SpeechBrain's savedir holds a link to it)
    assert str(error.value).startswith(f"'{os.path.join(folder, name)}' cannot be read (truncated or damaged")
    assert folder_snapshot(folder) == before


def test_a_truncated_file_of_an_export_without_the_loading_hook_is_named(tmp_path, exported_folder):
    """An export written before the hook (or one whose hyperparams.yaml was edited): the failed load is
    diagnosed by checking each weights file."""
    from tests.conftest import folder_snapshot
    from robustdistiller.inference.interface import DamagedModelFileError

    folder = damaged_copy(exported_folder, tmp_path, "encoder.ckpt", 0.5)
    hparams = os.path.join(folder, "hyperparams.yaml")
    with open(hparams, encoding="utf-8") as fin:
        text = fin.read()
    text = text[: text.index("    custom_hooks:")]
    with open(hparams, "w", encoding="utf-8") as fout:
        fout.write(text)
    before = folder_snapshot(folder)
    with pytest.raises(DamagedModelFileError) as error:
        EncoderInterface.from_hparams(source=folder, savedir=str(tmp_path / "savedir"))
    assert str(error.value).startswith(
        f"'{os.path.join(folder, 'encoder.ckpt')}' cannot be read (truncated or damaged: not a complete torch.save file"
    )
    assert folder_snapshot(folder) == before


@pytest.mark.parametrize("change, expected", [("narrower", "size mismatch"), ("missing", "Missing key")])
def test_weights_of_another_model_in_encoder_ckpt_are_refused_naming_it(tmp_path, exported_folder, change, expected):
    """SpeechBrain's default transfer loads with strict=False (a missing weight: a warning and a random
    one left); the export's hook loads strictly and names the file."""
    from tests.conftest import folder_snapshot
    from robustdistiller.inference.interface import DamagedModelFileError

    folder = str(tmp_path / "exported")
    shutil.copytree(exported_folder, folder)
    state = torch.load(os.path.join(folder, "encoder.ckpt"), weights_only=True)
    if change == "narrower":
        projection = state["feature_projection.projection.weight"]  # [32, 24]: a 16-wide model's is [16, 24]
        state["feature_projection.projection.weight"] = projection[:16]
    else:
        del state["encoder.layer_norm.weight"]
    torch.save(state, os.path.join(folder, "encoder.ckpt"))
    before = folder_snapshot(folder)
    with pytest.raises(
        DamagedModelFileError,
        match=r"(?s)encoder.ckpt' does not hold the weights of the model its "
        rf"hyperparams.yaml declares.*{expected}",
    ):
        EncoderInterface.from_hparams(source=folder, savedir=str(tmp_path / "savedir"))
    assert folder_snapshot(folder) == before


FOREIGN_CLASS_PROBE = """
import sys
from speechbrain.inference.interfaces import foreign_class
try:
    foreign_class(source=sys.argv[1], pymodule_file="custom_interface.py", classname="EncoderInterface",
                  savedir=sys.argv[2])
except Exception as error:
    print(type(error).__name__, error)
    print("robustdistiller imported:", any(name.startswith("robustdistiller") for name in sys.modules))
    sys.exit(3)
print("loaded")
"""


@pytest.mark.parametrize("name", ["encoder.ckpt", "prediction_split.ckpt"])
def test_a_truncated_weights_file_fails_foreign_class_naming_it(tmp_path, exported_folder, name):
    """Without this package (a fresh process, like `export --verify`): the hook lives in custom_interface.py."""
    import subprocess
    import sys

    from tests.conftest import folder_snapshot
    from robustdistiller.export.verify import REPOSITORY_ROOT

    folder = damaged_copy(exported_folder, tmp_path, name, 0.5)
    before = folder_snapshot(folder)
    environment = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    environment["PYTHONPATH"] = os.pathsep.join(
        entry
        for entry in environment.get("PYTHONPATH", "").split(os.pathsep)
        if entry and os.path.abspath(entry) != REPOSITORY_ROOT
    )
    completed = subprocess.run(
        [sys.executable, "-c", FOREIGN_CLASS_PROBE, folder, str(tmp_path / "savedir")],
        cwd=str(tmp_path),
        env=environment,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 3, completed.stdout + completed.stderr
    assert (
        f"DamagedModelFileError '{os.path.join(folder, name)}' cannot be read (truncated or damaged" in completed.stdout
    ), completed.stdout
    assert "robustdistiller imported: False" in completed.stdout
    assert folder_snapshot(folder) == before


def test_damaged_records_beside_a_checkpoint_are_named(tmp_path, caplog):
    """Every file `load_student` / the export reads names itself: a CKPT.yaml that cannot be parsed (that
    checkpoint is skipped when another one is there, as training's recovery does) and a damaged
    distillation_info.json."""
    import logging

    from tests.conftest import folder_snapshot

    run = tmp_path / "run"
    for index, step in enumerate((4, 8)):
        checkpoint = run / "save" / f"CKPT+2024-01-01+00-00-0{index}+00"
        checkpoint.mkdir(parents=True)
        torch.save(tiny_student(seed=index).state_dict(), checkpoint / "student.ckpt")
        (checkpoint / "CKPT.yaml").write_text(f"optimizer_step: {step}\nvalid_loss: {2.0 - index}\n")
    newer = run / "save" / "CKPT+2024-01-01+00-00-01+00"
    (newer / "CKPT.yaml").write_text("optimizer_step: 8\nvalid_loss: [1.0\n")  # cut off mid-write
    before = folder_snapshot(str(run))
    with caplog.at_level(logging.WARNING, logger="robustdistiller.export"):
        student, info = load_student(str(run))
    assert info["step"] == 4 and f"Skipping checkpoint {newer}: '{newer / 'CKPT.yaml'}' cannot be read" in caplog.text
    with pytest.raises(ExportError) as error:
        load_student(str(newer))
    assert str(error.value).startswith(f"'{newer / 'CKPT.yaml'}' cannot be read (truncated or damaged")
    (run / "distillation_info.json").write_text('{"teacher_source": "wav')
    with pytest.raises(ExportError) as error:
        load_student(str(run))
    assert str(error.value).startswith(f"'{run / 'distillation_info.json'}' cannot be read (truncated or damaged")
    (run / "distillation_info.json").unlink()
    assert folder_snapshot(str(run)) == before


def test_a_truncated_dpwavlm_export_fails_from_hparams_naming_the_file(tmp_path):
    """The DPWavLM interface shares `from_hparams`: its export (no loading hook in its YAML) is diagnosed."""
    from tests.conftest import folder_snapshot
    from robustdistiller.dpwavlm.interface import DPWavLMInterface
    from robustdistiller.inference.interface import DamagedModelFileError
    from tests.unit.dpwavlm.test_export import compact_model, write_run

    run = str(tmp_path / "run")
    write_run(run, compact_model())
    folder = str(tmp_path / "exported")
    export_student(run, folder)
    truncate(os.path.join(folder, "encoder.ckpt"), 0.5)
    before = folder_snapshot(folder, run)
    with pytest.raises(DamagedModelFileError) as error:
        DPWavLMInterface.from_hparams(source=folder, savedir=str(tmp_path / "savedir"))
    assert str(error.value).startswith(f"'{os.path.join(folder, 'encoder.ckpt')}' cannot be read (truncated or damaged")
    assert folder_snapshot(folder, run) == before
