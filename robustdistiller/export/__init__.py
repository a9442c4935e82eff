"""Exporting trained students, and loading them back from any of our checkpoint formats.

Run ``python -m robustdistiller.export <checkpoint> <output folder> [--s3prl] [--onnx [--int8 [all|matmul]]] [--overwrite]
[--verify]``. ``<checkpoint>`` is anything :func:`~robustdistiller.export.loading.load_student` reads: a training
output folder, its ``save`` folder (the checkpoint with the lowest validation loss is taken), one ``CKPT+...``
folder, a ``student.ckpt`` file, an s3prl-format ``.ckpt`` (DistilHuBERT, the authors' ``rd_*.ckpt``), an
exported folder, or a DPWavLM: a DPHuBERT-format ``.pth`` (``final.pth``, the released DPWavLM / RDDPWavLM files)
or a DPWavLM output folder, whose export (``dpwavlm.pth`` + a padded ``transformers.WavLMModel`` copy + a model
card) is :mod:`robustdistiller.dpwavlm.export`'s.

One module per idea (this file imports none of them, so that any one can be imported alone):

* :mod:`~robustdistiller.export.loading`: finding and loading students from every format
  (:func:`~robustdistiller.export.loading.load_student`, :func:`~robustdistiller.export.loading.locate_checkpoint`);
* :mod:`~robustdistiller.export.student_folder`: :func:`~robustdistiller.export.student_folder.export_student`, the
  export of every source, and the folder a DistilHuBERT-layout student becomes (SpeechBrain ``hyperparams.yaml`` +
  checkpoints + ``custom_interface.py``, the ``transformers.HubertModel`` files, optionally s3prl and ONNX);
* :mod:`~robustdistiller.export.folder`: the rules every export folder follows (``export_manifest.json``,
  ``--overwrite`` only over an unmodified earlier export, the folder's lock, the staging folder);
* :mod:`~robustdistiller.export.model_card`: the exported folder's ``README.md``;
* :mod:`~robustdistiller.export.verify`: ``--verify``, the folder loaded six ways in fresh processes and compared
  with the student;
* :mod:`~robustdistiller.export.onnx`: ``--onnx``, the student as an ONNX graph and its measured parity;
  :mod:`~robustdistiller.export.onnx_quantization`: ``--int8 all|matmul``, its int8 copies;
  :mod:`~robustdistiller.export.dpwavlm_onnx`: the same for a compact DPWavLM;
* :mod:`~robustdistiller.export.s3prl`: s3prl's ``distiller`` checkpoints, read safely and written;
* :mod:`~robustdistiller.export.layout`: the names of the files an export holds, the prediction heads' layout;
* :mod:`~robustdistiller.export.errors`: the exceptions; :mod:`~robustdistiller.export.cli`: the command.
"""
