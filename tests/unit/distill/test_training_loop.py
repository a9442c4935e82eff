"""The training loop at scale: no host-device synchronisation per step, a new batch order per epoch
that a resumed run continues exactly."""

from pathlib import Path
import collections
import traceback
import weakref

import speechbrain as sb
import torch
from torch.utils._pytree import tree_leaves
from torch.utils._python_dispatch import TorchDispatchMode

from tests.recipes.test_distillation import build_brain, first_batch
from tests.conftest import load_train_module

# Operations that make the host wait for the device when their input lives on a GPU.
SYNCHRONISING = {"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal", "item"}


def _short_path(filename):
    """``robustdistiller/<subpackage>/<module>.py`` for our files, ``<folder>/<module>.py`` for others."""
    if "/robustdistiller/" in filename:
        return "robustdistiller/" + filename.rsplit("/robustdistiller/", 1)[1]
    return "/".join(filename.rsplit("/", 2)[-2:])


class DeviceReadCounter(TorchDispatchMode):
    """Counts host reads of *device* data: tensors derived from the waveforms or the parameters.

    On a CPU-only machine every tensor is a host tensor, so the counter follows which ones hold
    computed data (the waveforms, parameters, and everything computed from them: activations,
    losses, gradients, optimizer state) and which ones are host bookkeeping (lengths); a read of
    the former is what would synchronise on a GPU. Boolean-mask indexing counts too (it needs the
    mask's ``nonzero``).
    """

    def __init__(self, sources):
        super().__init__()
        self.device_data = {}
        for tensor in sources:
            self._mark(tensor)
        self.reads = collections.Counter()

    def _mark(self, tensor):
        self.device_data[id(tensor)] = weakref.ref(tensor)

    def _is_device_data(self, tensor):
        reference = self.device_data.get(id(tensor))
        return reference is not None and reference() is tensor

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [leaf for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)]
        from_device = any(self._is_device_data(tensor) for tensor in inputs)
        name = func._schema.name.split("::")[-1]
        bool_index = name.startswith("index") and any(
            isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in tree_leaves(args[1:2])
        )
        if (from_device and name in SYNCHRONISING) or bool_index:
            frames = [frame for frame in traceback.extract_stack()[:-1] if "python_dispatch" not in frame.filename]
            origin = next(
                (
                    f"{_short_path(frame.filename)}:{frame.lineno}"
                    for frame in reversed(frames)
                    if "/robustdistiller/" in frame.filename or "/transformers/" in frame.filename
                ),
                "other",
            )
            self.reads[(name, origin)] += 1
        output = func(*args, **kwargs)
        if from_device:
            # a packed sequence's batch_sizes is a host tensor by design, even for CUDA data
            computed = output[:1] if name == "_pack_padded_sequence" else output
            for tensor in tree_leaves(computed):
                if isinstance(tensor, torch.Tensor):
                    self._mark(tensor)
        return output


def device_reads_of_a_step(brain, batch):
    """Host reads of device data during one ``fit_batch``."""
    sources = [batch.clean_sig.data, batch.noisy_sig.data, batch.reference_sig.data]
    sources += list(brain.modules.parameters()) + list(brain.hparams.teacher.parameters())
    sources += [value for state in brain.optimizer.state.values() for value in state.values() if torch.is_tensor(value)]
    with DeviceReadCounter(sources) as counter:
        brain.fit_batch(batch)
    return counter.reads


def test_a_training_step_never_reads_device_data_on_the_host(mini_corpus, tiny_teacher_folder, tmp_path):
    hparams, brain, train_data = build_brain(
        mini_corpus, tiny_teacher_folder, str(tmp_path / "run"), log_interval=1000, max_crop_samples=64000
    )
    batch = first_batch(train_data, size=3)
    assert len(set(batch.noisy_sig.lengths.tolist())) > 1  # a padded batch
    brain.fit_batch(batch)  # creates the optimizer state
    reads = device_reads_of_a_step(brain, batch)
    ours = {key: count for key, count in reads.items() if "robustdistiller/" in key[1]}
    assert not ours, ours
    # What remains lives inside transformers: WavLM zeroes padded frames with a boolean index
    # (hidden_states[~mask] = 0), one nonzero on a GPU
    # (docs/distillation.md, "Training at scale: memory, synchronisation, precision").
    assert set(origin for _, origin in reads) <= {"wavlm/modeling_wavlm.py:404"}, reads

    # The counter can fail: a log step brings the statistics to the host.
    brain.hparams.log_interval = 1
    log_step = device_reads_of_a_step(brain, batch)
    assert any("robustdistiller/distill/brain.py" in origin for _, origin in log_step), log_step


def batch_orders(mini_corpus, teacher_folder, output_folder, epochs, fail_at=None, **extra):
    """Runs ``Brain.fit`` with a recording training step; returns the utterance ids of each step.

    The step only records (and counts an optimizer step), so the loop, the sampler, the
    checkpoints and their recovery are the recipe's, at no training cost. ``fail_at`` raises
    (a crash) before that step.
    """
    train_module = load_train_module()
    hparams, brain, _ = build_brain(mini_corpus, teacher_folder, output_folder, number_of_epochs=epochs, **extra)
    train_data, valid_data, train_sampler = train_module.dataio_prepare(hparams)
    brain.ckpt_interval_minutes, brain.ckpt_interval_steps = 0, 2  # --ckpt_interval_steps=2
    steps = []

    def recording_step(batch):
        if fail_at is not None and len(steps) + 1 == fail_at:
            raise KeyboardInterrupt("simulated crash")
        steps.append(tuple(batch.id))
        brain.optimizer_step += 1
        return torch.tensor(0.0)

    brain.fit_batch = recording_step
    brain.evaluate_batch = lambda batch, stage: torch.tensor(0.0)
    try:
        brain.fit(
            brain.hparams.epoch_counter,
            train_data,
            valid_data,
            train_loader_kwargs={"batch_sampler": train_sampler, "num_workers": 0},
            valid_loader_kwargs=hparams["valid_dataloader_opts"],
        )
    except KeyboardInterrupt:
        pass
    return steps, len(train_sampler)


def test_every_epoch_has_a_new_order_and_a_resume_continues_it(mini_corpus, tiny_teacher_folder, tmp_path):
    extra = {"batch_size": 2, "batches_per_bucket": 1, "number_of_steps": 100}
    uninterrupted, steps_per_epoch = batch_orders(
        mini_corpus, tiny_teacher_folder, str(tmp_path / "full"), epochs=3, **extra
    )
    assert len(uninterrupted) == 3 * steps_per_epoch
    epochs = [uninterrupted[start : start + steps_per_epoch] for start in range(0, len(uninterrupted), steps_per_epoch)]
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]

    # Crash in the middle of epoch 2 (step 3 of it), after the intra-epoch checkpoint of its step 2.
    crash_at = steps_per_epoch + 3
    output = str(tmp_path / "crashed")
    before_crash, _ = batch_orders(mini_corpus, tiny_teacher_folder, output, epochs=3, fail_at=crash_at, **extra)
    assert before_crash == uninterrupted[: crash_at - 1]
    resumed, _ = batch_orders(mini_corpus, tiny_teacher_folder, output, epochs=3, **extra)
    checkpointed = steps_per_epoch + 2
    assert before_crash[:checkpointed] + resumed == uninterrupted


def test_tensorboard_curves_and_enhancement_quality_after_validation(mini_corpus, tiny_teacher_folder, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output = str(tmp_path / "run")
    hparams, brain, train_data = build_brain(
        mini_corpus, tiny_teacher_folder, output, use_tensorboard=True, quality_utterances=3, max_crop_samples=32000
    )
    _, valid_data, _ = load_train_module().dataio_prepare(hparams)
    batch = first_batch(train_data, size=2)
    for _ in range(2):
        brain.fit_batch(batch)
    brain.on_stage_end(sb.Stage.TRAIN, 0.0, epoch=1)
    brain.on_stage_start(sb.Stage.VALID, epoch=1)
    for index in range(0, 4, 2):
        brain.evaluate_batch(sb.dataio.batch.PaddedBatch([valid_data[index], valid_data[index + 1]]), sb.Stage.VALID)
    brain.on_stage_end(sb.Stage.VALID, 0.0, epoch=1)

    summary = brain.last_stage_summary
    assert 1.0 <= summary["enhanced_pesq"] <= 4.65 and 0.0 <= summary["enhanced_stoi"] <= 1.0
    assert "enhanced_si_snr" in summary and "noisy_si_snr" in summary
    assert "enhanced_pesq" in Path(hparams["train_log"]).read_text()

    events = EventAccumulator(hparams["tensorboard_logger"].save_dir)
    hparams["tensorboard_logger"].writer.flush()
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in (
        "train/loss",
        "train/l1_layer4",
        "train/cosine_layer12",
        "train/enhancement_loss",
        "train/lr",
        "train/gradient_norm",
        "valid/loss",
        "valid/enhanced_pesq",
        "valid/enhanced_stoi",
    ):
        assert tag in tags, sorted(tags)
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2]
    assert events.Scalars("train/gradient_norm")[-1].value > 0


def test_the_recipe_reports_enhancement_quality_per_condition(trained_run):
    import json
    import os

    robustness = json.loads(Path(os.path.join(trained_run, "robustness.json")).read_text())
    for name, result in robustness.items():
        assert result["num_scored"] + result["num_skipped"] > 0, name
        assert 1.0 <= result["pesq"] <= 4.65 and 0.0 <= result["stoi"] <= 1.0, (name, result)
    # the clean condition's input is the clean reference itself: the head can only lose SI-SNR there
    assert robustness["clean"]["si_snr_noisy"] > robustness["snr0"]["si_snr_noisy"] + 10
    log = Path(os.path.join(trained_run, "train_log.txt")).read_text()
    assert "enhanced_pesq" in log and "enhanced_stoi" in log
