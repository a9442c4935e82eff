#!/usr/bin/env python3
"""Recipe: noise-robust distillation of a self-supervised speech model (RobustDistiller).

The frozen teacher (WavLM Base+ by default) hears clean LibriSpeech crops; the DistilHuBERT-style
student hears a corrupted copy (noise, reverberation, both, or clean, per utterance) and predicts
the teacher's layers 4/8/12, while an enhancement head on the student recovers the clean spectrum.
``hparams/distilhubert.yaml`` runs the same code as plain DistilHuBERT (no corruption, no
enhancement head, HuBERT Base teacher).

To run::

    python train.py hparams/distill.yaml --data_folder=/data/LibriSpeech \
        --musan_folder=/data/musan --urbansound_folder=/data/UrbanSound8K --rir_folder=/data/RIRS_NOISES

    # your own audio instead of LibriSpeech: a folder, a CSV with a `wav` column, or a list of paths
    python train.py hparams/distill.yaml --train_audio=/data/my_speech --musan_folder=... --rir_folder=...

    # several GPUs
    torchrun --nproc_per_node=4 train.py hparams/distill.yaml ...

At the end of training the best student (lowest validation loss) is evaluated on the validation set
under each of the YAML's ``test_conditions`` (distillation loss and, with the enhancement head, PESQ /
STOI / SI-SNR of the enhanced speech) and the results are written to ``<output_folder>/robustness.json``.
"""

import json
import logging
import os
import re
import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main

from robustdistiller.distill.brain import DistillationBrain
from robustdistiller.data.batching import make_batch_sampler
from robustdistiller.data.pipeline import make_distillation_dataset
from robustdistiller.distill.evaluation import evaluate_conditions
from robustdistiller.runs.fingerprint import weights_fingerprint
from robustdistiller.runs.options import (
    as_list,
    exit_if_required_options_missing,
    integer_at_least,
    step_limit_as_number_of_steps,
)
from robustdistiller.data.prepare.librispeech import prepare_librispeech
from robustdistiller.data.prepare.own_audio import own_audio_options, overrides_without_librispeech, prepare_own_audio
from robustdistiller.data.prepare.noise import prepare_noise
from robustdistiller.data.prepare.rirs import prepare_rirs
from robustdistiller.runs.run_folder import (
    architecture_signature,
    check_run_signature,
    data_signature,
    lock_output_folder,
    log_to_output_folder,
    prepared_lists,
    run_signature,
    with_run_options,
)
from robustdistiller.models.student import num_parameters
from robustdistiller.dpwavlm.stages import FINAL_FILE as DPWAVLM_FINAL_FILE
from robustdistiller.dpwavlm.stages import check_options as check_dpwavlm_options
from robustdistiller.dpwavlm.stages import check_run_settings as check_dpwavlm_run_settings
from robustdistiller.dpwavlm.stages import load_teacher as load_dpwavlm_teacher
from robustdistiller.dpwavlm.stages import run_stages as run_dpwavlm_stages
from robustdistiller.dpwavlm.stages import stages_done as dpwavlm_stages_done

logger = logging.getLogger(__name__)


def dataio_prepare(hparams):
    """Builds the training and validation datasets and the training batch sampler.

    Training crops are random (at most ``max_crop_samples``) and corrupted by ``train_corruptor``;
    validation crops start at 0 and are corrupted by ``valid_corruptor`` with the same
    distribution but fixed draws, so validation losses are comparable across epochs. Without
    validation subsets (``valid_splits: []``) the validation set is None.
    """
    train_data = make_distillation_dataset(
        hparams["train_csv"],
        hparams["train_corruptor"],
        sample_rate=hparams["sample_rate"],
        max_crop_samples=hparams["max_crop_samples"],
        random_crop=True,
    )
    valid_data = None
    if hparams["valid_splits"]:
        valid_data = make_distillation_dataset(
            hparams["valid_csv"],
            hparams["valid_corruptor"],
            sample_rate=hparams["sample_rate"],
            max_crop_samples=hparams["max_crop_samples"],
            random_crop=False,
            key_prefix="valid/",
        )
    train_sampler = make_batch_sampler(
        train_data,
        batching=hparams["batching"],
        batch_size=hparams["batch_size"],
        batches_per_bucket=hparams["batches_per_bucket"],
        max_batch_seconds=hparams["max_batch_seconds"],
        bucket_boundaries=hparams["bucket_boundaries"],
        max_crop_samples=hparams["max_crop_samples"],
        sample_rate=hparams["sample_rate"],
        seed=hparams["seed"],
        accumulation=hparams["grad_accumulation_factor"],
    )
    return train_data, valid_data, train_sampler


def prepare_data(hparams):
    """Writes the utterance, noise and RIR lists (skipped when already prepared with the same options
    and every listed file still exists; ``force_prep`` rebuilds them)."""
    if hparams["train_audio"]:  # your own audio (a folder or a list) instead of LibriSpeech
        run_on_main(
            prepare_own_audio,
            kwargs={
                "train_audio": hparams["train_audio"],
                "save_folder": hparams["save_folder"],
                "valid_audio": hparams["valid_audio"],
                "valid_share": hparams["valid_share"],
                "min_samples": hparams["min_samples"],
                "skip_prep": hparams["skip_prep"],
                "force_prep": hparams["force_prep"],
            },
        )
    else:
        run_on_main(
            prepare_librispeech,
            kwargs={
                "data_folder": hparams["data_folder"],
                "save_folder": hparams["save_folder"],
                "train_splits": hparams["train_splits"],
                "valid_splits": hparams["valid_splits"],
                "min_samples": hparams["min_samples"],
                "skip_prep": hparams["skip_prep"],
                "force_prep": hparams["force_prep"],
            },
        )
    if hparams.get("noise_csv"):
        run_on_main(
            prepare_noise,
            kwargs={
                "save_folder": hparams["save_folder"],
                "musan_folder": hparams["musan_folder"],
                "musan_subsets": hparams["musan_subsets"],
                "urbansound_folder": hparams["urbansound_folder"],
                "extra_folders": hparams["extra_noise_folders"],
                "csv_name": os.path.basename(hparams["noise_csv"]),
                "skip_prep": hparams["skip_prep"],
                "force_prep": hparams["force_prep"],
            },
        )
    if hparams.get("rir_csv"):
        run_on_main(
            prepare_rirs,
            kwargs={
                "save_folder": hparams["save_folder"],
                "rir_folder": hparams["rir_folder"],
                "rir_format": hparams["rir_format"],
                "rirs_noises_subsets": hparams["rirs_noises_subsets"],
                "csv_name": os.path.basename(hparams["rir_csv"]),
                "skip_prep": hparams["skip_prep"],
                "force_prep": hparams["force_prep"],
            },
        )


def check_options(hparams):
    """Refuses settings that cannot make a run, before anything is loaded or written.

    Single strings where lists are expected become one-item lists (``--train_splits=train-clean-100``).
    """
    for key in (
        "train_splits",
        "valid_splits",
        "musan_subsets",
        "rirs_noises_subsets",
        "extra_noise_folders",
        "target_layers",
        "accept_changed_settings",
        "run_signature_keys",
    ):
        if key in hparams:
            hparams[key] = as_list(hparams[key], key)
    hparams["number_of_steps"] = integer_at_least(hparams["number_of_steps"], "number_of_steps", 1)
    if not hparams["valid_splits"] and hparams["test_conditions"]:
        logger.warning(
            "valid_splits is empty: no validation (the latest checkpoint is kept and exported) and no "
            "robustness evaluation under test_conditions."
        )


def training_info(hparams, hparams_file):
    """What the student is distilled from, for ``<save_folder>/distillation_info.json``.

    ``robustdistiller.export`` reads it to write the model card of an exported student; the Brain
    writes it after a successful recovery.
    """
    teacher = hparams["teacher"]
    probabilities = hparams["train_corruptor"].condition_probs
    corrupted = any(probability > 0 for name, probability in probabilities.items() if name != "clean")
    corruption = {"condition_probs": dict(probabilities)}
    if corrupted:
        corruption.update(snr_db=[hparams["snr_low"], hparams["snr_high"]], noise_list=hparams.get("noise_csv"))
        corruption.update(rir_list=hparams.get("rir_csv"))
    return {
        "recipe": "RobustDistiller" if corrupted or hparams["enhancement_weight"] > 0 else "DistilHuBERT",
        "hparams_file": os.path.abspath(hparams_file),
        "teacher_source": str(hparams["teacher_source"]),
        "teacher_type": teacher.config.model_type,
        "teacher_parameters": num_parameters(teacher.model),
        "teacher_fingerprint": weights_fingerprint(teacher.model),
        "target_layers": list(hparams["target_layers"]),
        "data_folder": str(hparams["data_folder"]),
        "train_audio": hparams["train_audio"],
        "train_splits": list(hparams["train_splits"]),
        "corruption": corruption,
        "enhancement_weight": hparams["enhancement_weight"],
        "number_of_steps": int(hparams["number_of_steps"]),
        "seed": hparams["seed"],
    }


def distillation_signature(hparams, teacher_fingerprint):
    """Everything that defines a distillation run, compared at every resume (docs/failure_and_resume.md).

    The YAML's ``run_signature_keys``, the teacher's weights fingerprint, the content of every prepared
    list (:func:`~robustdistiller.runs.run_folder.data_signature`; call it after the preparation) and the
    shape of every trained module (:func:`~robustdistiller.runs.run_folder.architecture_signature`).
    """
    extra = {"teacher_fingerprint": teacher_fingerprint}
    extra.update(data_signature(hparams))
    extra.update(architecture_signature(dict(hparams["modules"])))
    return run_signature(hparams, hparams["run_signature_keys"], extra=extra)


def has_checkpoints(save_folder):
    """Whether ``save_folder`` (or a stage folder under it) holds a checkpoint folder ``CKPT+...``."""
    for folder in (save_folder, os.path.join(save_folder, "stage1"), os.path.join(save_folder, "stage2")):
        if os.path.isdir(folder) and any(name.startswith("CKPT+") for name in os.listdir(folder)):
            return True
    return False


def run_dpwavlm(hparams, hparams_file, overrides, run_opts):
    """DPWavLM (``hparams/dpwavlm.yaml``, ``hparams/robust_dpwavlm.yaml``): both stages, see
    :mod:`robustdistiller.dpwavlm.stages`; the same data preparation and pipeline as the distillation."""
    for key in (
        "train_splits",
        "valid_splits",
        "musan_subsets",
        "rirs_noises_subsets",
        "extra_noise_folders",
        "pruning_units",
        "accept_changed_settings",
        "run_signature_keys",
    ):
        if key in hparams:
            hparams[key] = as_list(hparams[key], key)
    check_dpwavlm_options(hparams)  # before anything is loaded or written
    if sb.utils.distributed.if_main_process():
        lock_output_folder(hparams["output_folder"])
    log_to_output_folder(hparams["output_folder"])
    teacher = load_dpwavlm_teacher(hparams)
    finished = os.path.isfile(os.path.join(hparams["output_folder"], DPWAVLM_FINAL_FILE))
    if not (finished and all(os.path.isfile(path) for path in prepared_lists(hparams).values())):
        prepare_data(hparams)  # the signature holds what the prepared lists contain
    # (a finished run is signed with the lists it was trained on: it trains nothing more)
    # a resume (or a finished run) made with other settings is refused before the run's records are rewritten
    check_dpwavlm_run_settings(hparams, teacher)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"], hyperparams_to_save=hparams_file, overrides=overrides
    )
    if dpwavlm_stages_done(hparams):
        return
    run_dpwavlm_stages(hparams, dataio_prepare(hparams), run_opts, teacher=teacher)


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    overrides = overrides_without_librispeech(overrides)  # --train_audio: LibriSpeech's data_folder is not used
    exit_if_required_options_missing(hparams_file, overrides)  # names every unset !PLACEHOLDER
    with open(hparams_file, encoding="utf-8") as fin:
        is_dpwavlm = re.search(r"^recipe:\s*dpwavlm\b", fin.read(), re.MULTILINE) is not None
    # SpeechBrain's --optimizer_step_limit would cut the schedule planned for number_of_steps short
    run_opts, overrides = step_limit_as_number_of_steps(
        run_opts, overrides, stage_options=("stage1_steps", "stage2_steps") if is_dpwavlm else None
    )
    sb.utils.distributed.ddp_init_group(run_opts)

    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    # --grad_accumulation_factor, --max_grad_norm... are SpeechBrain run options: the Brain uses them instead
    # of the YAML's values, so the batch sampler and the run signature must see them too
    hparams = with_run_options(hparams, run_opts)
    hparams = own_audio_options(hparams)  # --train_audio: no LibriSpeech subsets; validation if a list will exist
    if hparams.get("recipe") == "dpwavlm":  # the two-stage DPWavLM recipe
        run_dpwavlm(hparams, hparams_file, overrides, run_opts)
        sys.exit(0)
    check_options(hparams)
    if sb.utils.distributed.if_main_process():
        lock_output_folder(hparams["output_folder"])  # one run per output folder
    log_to_output_folder(hparams["output_folder"])

    prepare_data(hparams)
    # A resume must continue the same run: checked before anything of the run (hyperparams.yaml, env.log,
    # the train.py copy) is rewritten; the Brain checks it again before recovery and records it after.
    info = training_info(hparams, hparams_file)
    signature = distillation_signature(hparams, info["teacher_fingerprint"])
    check_run_signature(
        hparams["save_folder"],
        signature,
        accept=hparams["accept_changed_settings"],
        resuming=has_checkpoints(hparams["save_folder"]),
    )
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    train_data, valid_data, train_sampler = dataio_prepare(hparams)

    # Copy the teacher's CNN, projection, positional convolution and first layers into the student;
    # a resumed run overwrites them from its checkpoint right after.
    hparams["student"].init_from_teacher(
        hparams["teacher"].model, copy_encoder_layer_norm=hparams["copy_encoder_layer_norm"]
    )

    brain = DistillationBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
        run_signature=signature,
        run_info=info,
    )
    brain.fit(
        brain.hparams.epoch_counter,
        train_data,
        valid_data,
        train_loader_kwargs={"batch_sampler": train_sampler, "num_workers": hparams["num_workers"]},
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )

    if sb.utils.distributed.if_main_process() and hparams["test_conditions"] and valid_data is not None:
        brain.checkpointer.recover_if_possible(min_key="valid_loss")
        # Unwrap DDP: only the main process evaluates, so no collective call may happen.
        student = getattr(brain.modules.student, "module", brain.modules.student)
        results = evaluate_conditions(
            student,
            hparams["teacher"],
            hparams["valid_csv"],
            hparams["test_corruptor"],
            hparams["test_conditions"],
            batch_size=hparams["valid_dataloader_opts"]["batch_size"],
            max_crop_samples=hparams["max_crop_samples"],
            sample_rate=hparams["sample_rate"],
            cosine_weight=hparams["cosine_weight"],
            device=brain.device,
            enhancement_head=brain._head if brain.enhancement_enabled else None,
            enhancement_input=hparams.get("enhancement_input", "cnn"),  # the DistilHuBERT YAML has no head
            quality_utterances=hparams.get("quality_utterances", 0),
        )
        results_file = os.path.join(hparams["output_folder"], "robustness.json")
        with open(results_file, "w", encoding="utf-8") as fout:
            json.dump(results, fout, indent=2)
        logger.info("Held-out distillation loss per condition written to %s", results_file)
