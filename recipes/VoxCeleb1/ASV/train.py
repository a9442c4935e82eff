#!/usr/bin/env python3
"""SUPERB automatic speaker verification (ASV) on VoxCeleb1 with a frozen upstream, clean and corrupted tests.

The upstream (an exported RobustDistiller student, a distillation checkpoint, an s3prl checkpoint or
any Hugging Face WavLM / HuBERT / wav2vec 2.0) stays frozen; a learnable weighted sum of its layers
feeds a linear projector (s3prl's connector) and SpeechBrain's x-vector (5 TDNN layers, statistics
pooling, 512-dim embedding), trained with AM-softmax (cosine classifier, additive margin 0.4, scale
30) to classify the VoxCeleb1 dev speakers. Trials are scored by the cosine similarity of the two
utterances' embeddings; the metric is the EER (s3prl's definition, see :func:`equal_error_rate`) and
the normalised minDCF.

Silences are removed from every utterance first, as s3prl does (sox ``silence 1 0.1 0.1% -1 0.1
0.1%``, re-implemented in :mod:`robustdistiller.downstream.silence`; ``trim_silence``), before cropping
and corruption. The checkpoint with the lowest EER on validation trials between held-out dev speakers
(never trained on) is tested on the trials of ``trial_list`` (``original``: ``veri_test.txt``, s3prl's;
``cleaned``: ``veri_test2.txt``) under every test condition: in a condition both the
enrolment and the test utterance are corrupted (each utterance once, seeded by its ID). Results go to
``<output_folder>/results.{json,md}``, trial scores to ``<output_folder>/scores/<condition>.txt``.

To run::

    python train.py hparams/superb_asv.yaml --data_folder=/data/VoxCeleb1 \
        --upstream_source=/models/exported_student \
        --test_musan_folder=/data/musan --test_rir_folder=/data/RIRS_NOISES
"""

import logging
import os
import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from prepare_voxceleb1_asv import prepare_voxceleb1_asv, read_trial_csv
from speechbrain.utils.distributed import if_main_process, run_on_main

from robustdistiller.downstream import (
    DownstreamBrain,
    audio_dataset,
    build_corruptors,
    prepare_corruption_lists,
    start_run,
    write_condition_results,
)
from robustdistiller.downstream.silence import (
    SilenceTrimmedPipeline,
    trim_options_from_hparams,
    trimmed_condition_test_set_factory,
)
from robustdistiller.runs.options import exit_if_required_options_missing

logger = logging.getLogger(__name__)


def score_trials(embeddings, trials):
    """Cosine scores of trials from L2-normalised embeddings.

    Arguments
    ---------
    embeddings : dict
        ``utterance ID -> [E]`` unit-norm embedding.
    trials : list of (int, str, str)
        ``(label, enrol ID, test ID)``.

    Returns
    -------
    scores : torch.Tensor
        ``[N]`` cosine similarities.
    labels : torch.Tensor
        ``[N]`` bool, True for target trials.

    Example
    -------
    >>> unit = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.6, 0.8]), "c": torch.tensor([0.0, 1.0])}
    >>> score_trials(unit, [(1, "a", "b"), (0, "a", "c")])
    (tensor([0.6000, 0.0000]), tensor([ True, False]))
    """
    missing = sorted({utt for _, enrol, test in trials for utt in (enrol, test) if utt not in embeddings})
    if missing:
        raise KeyError(f"{len(missing)} trial utterances have no embedding, e.g. {missing[:3]}")
    enrol = torch.stack([embeddings[enrol] for _, enrol, _ in trials])
    test = torch.stack([embeddings[test] for _, _, test in trials])
    labels = torch.tensor([bool(label) for label, _, _ in trials])
    return (enrol * test).sum(dim=-1), labels


def equal_error_rate(scores, labels):
    """EER as s3prl computes it (``sklearn.metrics.roc_curve`` + ``brentq`` on the interpolated ROC), from one sort.

    The ROC curve (false-positive rate, true-positive rate) over every distinct score threshold, linearly
    interpolated; the EER is where it crosses ``FNR = FPR``. Not SpeechBrain's
    ``speechbrain.utils.metric_stats.EER``: that one loops in Python over ~2 x trials thresholds (58 s for the
    37,720 Vox1-O trials on this project's 2-core machine, per test condition) and returns
    ``(FAR + FRR) / 2`` at the best discrete threshold instead of the interpolated crossing (without tied
    scores the two agree to one ROC step; the test checks it).

    Arguments
    ---------
    scores : torch.Tensor
        ``[N]`` trial scores (higher: same speaker).
    labels : torch.Tensor
        ``[N]`` bool, True for target trials (both classes present).

    Returns
    -------
    eer : float
        In [0, 1].
    threshold : float
        The score threshold of the ROC point where the crossing ends.

    Example
    -------
    >>> eer, threshold = equal_error_rate(torch.tensor([0.9, 0.8, 0.3, 0.5, 0.2, 0.1]),
    ...                                   torch.tensor([1, 1, 1, 0, 0, 0]).bool())
    >>> round(eer, 4), round(threshold, 4)
    (0.3333, 0.3)
    >>> equal_error_rate(torch.tensor([0.6, 0.5, 0.5, 0.1]), torch.tensor([1, 1, 0, 0]).bool())[0]  # a tie
    0.25
    """
    scores, labels = scores.double(), labels.bool()
    num_target, num_nontarget = int(labels.sum()), int((~labels).sum())
    if not num_target or not num_nontarget:
        raise ValueError(f"EER needs target and non-target trials, got {num_target} and {num_nontarget}")
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores, sorted_labels = scores[order], labels[order].double()
    last_of_group = torch.ones_like(sorted_scores, dtype=torch.bool)
    last_of_group[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    zero = torch.zeros(1, dtype=torch.float64)
    tpr = torch.cat([zero, torch.cumsum(sorted_labels, 0)[last_of_group] / num_target])
    fpr = torch.cat([zero, torch.cumsum(1 - sorted_labels, 0)[last_of_group] / num_nontarget])
    gap = 1 - fpr - tpr  # FNR - FPR: 1 at the origin, -1 at (1, 1)
    end = int(torch.nonzero(gap <= 0)[0])
    start = end - 1
    eer = fpr[start] + (fpr[end] - fpr[start]) * gap[start] / (gap[start] - gap[end])
    return float(eer), float(sorted_scores[last_of_group][end - 1])


def normalized_min_dcf(scores, labels, p_target=0.01, c_miss=1.0, c_fa=1.0):
    """Minimum normalised detection cost over all thresholds (NIST SRE / VoxSRC definition).

    ``min_t (c_miss P_miss(t) p_target + c_fa P_fa(t) (1 - p_target)) / min(c_miss p_target,
    c_fa (1 - p_target))``, computed from one sort (SpeechBrain's ``minDCF`` is the unnormalised cost
    and builds a thresholds x trials matrix, too large for the 37,611 VoxCeleb1 trials).

    Example
    -------
    >>> normalized_min_dcf(torch.tensor([0.9, 0.8, 0.3, 0.1]), torch.tensor([True, True, False, False]))
    0.0
    >>> round(normalized_min_dcf(torch.tensor([0.9, 0.2, 0.3, 0.1]), torch.tensor([True, True, False, False])), 4)
    0.5
    """
    order = torch.argsort(scores.double())
    sorted_scores, sorted_labels = scores.double()[order], labels[order].double()
    num_target, num_nontarget = sorted_labels.sum(), (1 - sorted_labels).sum()
    # Threshold below everything, then just above each distinct score (a trial is accepted if score > t).
    last_of_group = torch.ones_like(sorted_scores, dtype=torch.bool)
    last_of_group[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    misses = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(sorted_labels, 0)[last_of_group]])
    rejected_nontarget = torch.cat(
        [torch.zeros(1, dtype=torch.float64), torch.cumsum(1 - sorted_labels, 0)[last_of_group]]
    )
    p_miss = misses / num_target
    p_fa = (num_nontarget - rejected_nontarget) / num_nontarget
    cost = c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)
    return float(cost.min() / min(c_miss * p_target, c_fa * (1 - p_target)))


class SpeakerVerificationBrain(DownstreamBrain):
    """x-vector on the weighted layer sum, trained with AM-softmax, scored with cosine similarity.

    ``modules``: ``weighted_sum``, ``projector`` (``Linear(D -> P)``), ``xvector``
    (``speechbrain.lobes.models.Xvector.Xvector``) and ``classifier`` (cosine classifier over the
    training speakers). Training batches carry ``sig`` and ``speaker_encoded``; validation and test
    stages collect one unit-norm embedding per utterance and score their trials at the stage end:
    ``self.stage_stats`` of a test stage is ``{"EER" (percent), "minDCF", "trials"}``.

    Arguments
    ---------
    *args, **kwargs
        Those of ``speechbrain.Brain``.
    valid_trials, test_trials : list of (int, str, str)
        ``(label, enrol ID, test ID)`` of the validation and test stages.
    """

    def __init__(self, *args, valid_trials, test_trials, **kwargs):
        super().__init__(*args, **kwargs)
        self.trials = {sb.Stage.VALID: valid_trials, sb.Stage.TEST: test_trials}

    def compute_forward(self, batch, stage):
        """Cosine logits ``[B, 1, speakers]`` in training, embeddings ``[B, 1, E]`` otherwise."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        features, frame_mask = self.encode(wavs, wav_lens)
        # Padded frames are zeroed, so an utterance's embedding does not depend on its batch.
        features = self.modules.projector(features) * frame_mask.unsqueeze(-1).to(features.dtype)
        frame_lens = frame_mask.sum(dim=1).to(features.dtype) / frame_mask.shape[1]
        embeddings = self.modules.xvector(features, frame_lens)
        if stage == sb.Stage.TRAIN:
            return self.modules.classifier(embeddings)
        return embeddings

    def compute_objectives(self, predictions, batch, stage):
        """AM-softmax loss in training; outside training, stores the embeddings (the loss is 0)."""
        if stage == sb.Stage.TRAIN:
            speakers = batch.speaker_encoded.data.to(self.device)
            return self.hparams.compute_cost(predictions, speakers)
        embeddings = torch.nn.functional.normalize(predictions.detach().squeeze(1).float(), dim=-1).cpu()
        self.embeddings.update(zip(batch.id, embeddings))
        return torch.zeros((), device=self.device)

    def on_stage_start(self, stage, epoch=None):
        """New embedding store for validation and test."""
        super().on_stage_start(stage, epoch)
        if stage != sb.Stage.TRAIN:
            self.embeddings = {}

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Scores the trials; keeps the best checkpoint (the lowest validation EER); records test statistics."""
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        scores, labels = score_trials(self.embeddings, self.trials[stage])
        eer, threshold = equal_error_rate(scores, labels)
        stats = {
            "EER": 100.0 * eer,
            "minDCF": normalized_min_dcf(scores, labels, p_target=self.hparams.min_dcf_p_target),
            "trials": len(labels),
        }
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]},
                train_stats={"loss": self.train_loss},
                valid_stats=stats,
            )
            self.keep_best_checkpoint(stats)
            return
        stats["threshold"] = threshold
        self.stage_stats = stats
        condition = getattr(self, "condition", "test")
        self.hparams.train_logger.log_stats(stats_meta={"test condition": condition}, test_stats=stats)
        if if_main_process():
            self.write_scores(condition, scores, self.trials[stage])

    def write_scores(self, condition, scores, trials):
        """``<output_folder>/scores/<condition>.txt``: ``<enrol> <test> <score> <label>`` per trial."""
        folder = os.path.join(self.hparams.output_folder, "scores")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{condition}.txt"), "w", encoding="utf-8") as fout:
            for (label, enrol, test), score in zip(trials, scores.tolist()):
                fout.write(f"{enrol} {test} {score:.6f} {label}\n")


def dataio_prepare(hparams, test_corruptor, train_corruptor):
    """Datasets, the test-set factory, the speaker encoder and the trials.

    Returns
    -------
    dict
        ``train``, ``valid`` (datasets), ``make_test_set`` (``(name, spec) -> dataset``),
        ``label_encoder``, ``valid_trials``, ``test_trials``.
    """
    csv_files = {name: hparams[f"{name}_csv"] for name in ("train", "valid", "valid_trials", "test", "test_trials")}
    trim_options = trim_options_from_hparams(hparams)
    label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes("speaker")
    @sb.utils.data_pipeline.provides("speaker_encoded")
    def encode_speaker(speaker):
        return label_encoder.encode_label_torch(speaker)

    # As robustdistiller.downstream.training_pipeline, with silence removal before the crop.
    train_pipeline = SilenceTrimmedPipeline(
        hparams["sample_rate"],
        corruptor=train_corruptor,
        max_samples=hparams["max_train_samples"],
        random_crop=True,
        seed=hparams["seed"],
        key_prefix="train/",
        trim_options=trim_options,
    )
    train = audio_dataset(
        csv_files["train"], train_pipeline, ["id", "sig", "speaker_encoded"], extra_items=[encode_speaker]
    )
    label_encoder.load_or_create(
        path=os.path.join(hparams["save_folder"], "label_encoder.txt"), from_didatasets=[train], output_key="speaker"
    )
    if len(label_encoder) != hparams["num_train_speakers"]:
        raise ValueError(
            f"{csv_files['train']} has {len(label_encoder)} training speakers but num_train_speakers is "
            f"{hparams['num_train_speakers']} (num_dev_speakers - valid_speakers): set num_dev_speakers to "
            f"{len(label_encoder) + hparams['valid_speakers']}"
        )
    valid_pipeline = SilenceTrimmedPipeline(hparams["sample_rate"], trim_options=trim_options)
    valid = audio_dataset(csv_files["valid"], valid_pipeline, ["id", "sig"])

    make_test_set = trimmed_condition_test_set_factory(
        hparams, csv_files["test"], test_corruptor, ["id", "sig"], trim_options
    )

    return {
        "train": train,
        "valid": valid,
        "make_test_set": make_test_set,
        "label_encoder": label_encoder,
        "valid_trials": read_trial_csv(csv_files["valid_trials"]),
        "test_trials": read_trial_csv(csv_files["test_trials"]),
    }


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    exit_if_required_options_missing(hparams_file, overrides)  # names every unset !PLACEHOLDER
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    start_run(hparams_file, hparams, overrides)  # option checks, output folder lock, upstream identity
    run_on_main(
        prepare_voxceleb1_asv,
        kwargs={**hparams["prepare_options"], "trim_options": trim_options_from_hparams(hparams)},
    )
    run_on_main(prepare_corruption_lists, args=[hparams])
    test_corruptor, train_corruptor, conditions = build_corruptors(hparams)
    data = dataio_prepare(hparams, test_corruptor, train_corruptor)

    brain = SpeakerVerificationBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
        valid_trials=data["valid_trials"],
        test_trials=data["test_trials"],
    )
    brain.fit(
        hparams["epoch_counter"],
        data["train"],
        data["valid"],
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    results = brain.evaluate_conditions(data["make_test_set"], conditions, hparams["test_dataloader_opts"])
    if if_main_process():
        write_condition_results(
            hparams["output_folder"],
            "ASV (VoxCeleb1)",
            results,
            ["EER", "minDCF", "trials"],
            upstream=hparams["upstream"],
            layer_weights=brain.layer_weights(),
            extra={
                "num_train_speakers": len(data["label_encoder"]),
                "valid_trials": len(data["valid_trials"]),
                "trial_list": hparams["trial_file"] or hparams["trial_list"],
                "trim_silence": bool(hparams["trim_silence"]),
                "metric_notes": "EER in percent; minDCF normalised, p_target = "
                f"{hparams['min_dcf_p_target']}; cosine scoring",
            },
        )
