"""Held-out distillation loss of a student under named corruption conditions.

This answers the paper's central question in one number per condition: how well does the student,
hearing corrupted speech, still predict the teacher's representation of the clean speech? The recipe
(``train.py``) calls it at the end of training with the YAML's ``test_conditions``; the demo calls
it for the RobustDistiller and the DistilHuBERT students side by side.
With the enhancement head, each condition also gets PESQ / STOI / SI-SNR of the enhanced speech
(:mod:`robustdistiller.distill.enhancement_quality`).
"""

import logging

import speechbrain as sb
import torch
from tqdm import tqdm

from robustdistiller.data.pipeline import make_distillation_dataset
from robustdistiller.distill.enhancement_quality import QualityMeans, enhance_batch
from robustdistiller.distill.losses import distillation_loss
from robustdistiller.runs.log_format import format_stats
from robustdistiller.runs.workers import cap_num_workers

logger = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_conditions(
    student,
    teacher,
    csv_file,
    corruptor,
    conditions,
    batch_size=8,
    max_crop_samples=None,
    sample_rate=16000,
    cosine_weight=1.0,
    device="cpu",
    num_workers=0,
    enhancement_head=None,
    enhancement_input="cnn",
    quality_utterances=0,
):
    """Mean distillation loss of ``student`` on ``csv_file`` for each named condition.

    Arguments
    ---------
    student : robustdistiller.models.student.DistillerStudent
        Student to evaluate (switched to eval mode here).
    teacher : robustdistiller.models.teacher.FrozenTeacher
        Teacher producing the clean targets.
    csv_file : str
        Held-out utterance list.
    corruptor : robustdistiller.data.corruption.Corruptor
        Corruptor whose adders implement the conditions.
    conditions : dict
        ``name -> {"condition": str, "snr": float (optional)}``, e.g.
        ``{"clean": {"condition": "clean"}, "snr5": {"condition": "noise", "snr": 5}}``.
    batch_size : int
        Utterances per batch.
    max_crop_samples : int, optional
        Crop (from the start) long utterances to this many samples.
    sample_rate : int
        Sampling rate.
    cosine_weight : float
        Weight of the log-sigmoid cosine term, as in training.
    device : str
        Device to run on.
    num_workers : int
        DataLoader workers.
    enhancement_head : robustdistiller.models.enhancement.EnhancementHead, optional
        The student's enhancement head; with ``quality_utterances > 0``, the enhanced waveforms of the
        first ``quality_utterances`` utterances of each condition are scored too (same forward pass,
        see :mod:`robustdistiller.distill.enhancement_quality`).
    enhancement_input : str
        The head's input, ``"cnn"`` or ``"last_hidden"``, as in training.
    quality_utterances : int
        Utterances per condition scored for enhancement quality (0: none).

    Returns
    -------
    dict
        ``name -> {"distillation_loss", "l1", "cosine_similarity"}`` (utterance-weighted means); with
        the head and ``quality_utterances > 0`` also ``"pesq"``, ``"stoi"``, ``"si_snr"``,
        ``"si_snr_noisy"`` (means over scored utterances, NaN when none), ``"num_scored"`` and
        ``"num_skipped"``.
    """
    score_quality = enhancement_head is not None and quality_utterances > 0
    was_training = student.training
    student.eval()
    if score_quality:
        head_was_training = enhancement_head.training
        enhancement_head.eval()
    teacher.to(device)
    results = {}
    for name, spec in conditions.items():
        dataset = make_distillation_dataset(
            csv_file,
            corruptor,
            sample_rate=sample_rate,
            max_crop_samples=max_crop_samples,
            random_crop=False,
            condition=spec["condition"],
            snr=spec.get("snr"),
            key_prefix=f"test/{spec['condition']}/",  # paired: snr0 ... snr20 share noise segments
        )
        loader = sb.dataio.dataloader.make_dataloader(
            dataset, **cap_num_workers({"batch_size": batch_size, "num_workers": num_workers})
        )
        totals = {"distillation_loss": 0.0, "l1": 0.0, "cosine_similarity": 0.0}
        num_utterances = 0
        quality = QualityMeans(quality_utterances, sample_rate) if score_quality else None
        for batch in tqdm(loader, desc=f"test {name}", leave=False):
            batch = batch.to(device)
            clean_wavs, wav_lens = batch.clean_sig
            noisy_wavs, _ = batch.noisy_sig
            targets = teacher(clean_wavs, wav_lens)
            predictions = student(noisy_wavs, wav_lens)
            losses = distillation_loss(
                predictions.predictions.float(), targets.layers, predictions.frame_mask, cosine_weight
            )
            count = len(batch.id)
            totals["distillation_loss"] += float(losses["loss"]) * count
            totals["l1"] += float(losses["l1"].mean()) * count
            totals["cosine_similarity"] += float(losses["cosine_similarity"].mean()) * count
            num_utterances += count
            if quality is not None and quality.remaining > 0:
                reference_wavs, _ = batch.reference_sig
                enhanced = enhance_batch(enhancement_head, predictions, noisy_wavs, wav_lens, enhancement_input)
                quality.update_batch(batch.id, enhanced, reference_wavs, noisy_wavs, wav_lens)
        results[name] = {key: value / max(num_utterances, 1) for key, value in totals.items()}
        if quality is not None:
            results[name].update(quality.summary())
        logger.info("test condition %s: %s", name, format_stats(results[name]))
    student.train(was_training)
    if score_quality:
        enhancement_head.train(head_was_training)
    return results
