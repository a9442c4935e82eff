"""Data preparation: CSV lists of LibriSpeech, noise collections and room impulse responses.

One module per corpus, beside the toolkit they share:

- :mod:`.librispeech`: :func:`~.librispeech.prepare_librispeech`, ``ID,duration,wav,spk_id,wrd`` for the
  training and validation subsets;
- :mod:`.noise`: :func:`~.noise.prepare_noise`, MUSAN, UrbanSound8K and any folders of audio into
  SpeechBrain's noise CSV format ``ID,duration,wav,wav_format,wav_opts`` (for ``AddNoise``);
- :mod:`.rirs`: :func:`~.rirs.prepare_rirs`, RIRS_NOISES (OpenSLR 28), DNS-Challenge impulse responses
  or any folder of RIRs into the same format (for ``AddReverb``);
- :mod:`.pools`: what the noise and RIR pools share (their format, their composition JSON);
- :mod:`.lists`: the list toolkit of every preparation, the downstream recipes' ``prepare_*.py``
  included (CSV writing, prepared markers, left-out files, stale lists).

The distillation recipe (``train.py``) calls the three ``prepare_*`` functions. Each reads a corpus in
its real on-disk layout (``docs/reference/corpora.md``), writes CSV files into ``save_folder`` and
returns their paths. They never modify, split or delete anything under the user's data folders
(unlike SpeechBrain's ``write_csv(..., max_length=...)`` and ``prepare_dataset_from_URL``). A JSON
marker next to the CSVs records the options; a second call with the same options does nothing, a call
with other options (or ``force_prep=True``) prepares again. The functions are plain, so a recipe wraps
them in ``speechbrain.utils.distributed.run_on_main``.

Next to each noise and RIR CSV, ``<csv stem>_composition.json``
(:func:`~.pools.composition_path`) records the pool's composition: files and hours per source (MUSAN
subset, UrbanSound8K, each extra folder; RIR folder with its kind, real or simulated) and the share of
the uniform file draws each source gets (its share of files: the pools draw a file uniformly). It is
logged at every preparation, and recomputed from the CSV if missing. It goes to ``save_folder`` only,
like every derived file.

Files left out. Nothing is dropped silently: every file a preparation finds but does not list is
counted per reason (:class:`~.lists.LeftOutFiles`), each reason gives one warning line
``N files left out of <list>: <reason> (e.g. <path>)``, and the counts with a few example paths
per reason go to ``<csv stem>_skipped.json`` next to each CSV (:func:`~.lists.skipped_path`). Left out:
unreadable or empty audio, non-audio and hidden files, paths (or transcripts) containing ``$``
(SpeechBrain's CSV loader would read it as a variable), LibriSpeech utterances without a
transcript line, transcript lines whose ``.flac`` is missing (an interrupted extraction),
LibriSpeech files outside a speaker folder and utterances shorter than ``min_samples``, noise
files shorter than :data:`~.noise.MIN_NOISE_SECONDS` (they would be tiled into a buzz), RIRs listed in
a ``rir_list`` but missing. Extensions match case-insensitively (``.FLAC``, ``.WAV`` are audio).

Damaged audio. A file whose header is intact but whose data ends early (a truncated copy or
download: the FLAC header still promises the full length) is found at preparation, by decoding its
last block (:func:`robustdistiller.data.audio.audio_info` with ``check_end=True``, about 0.3 ms a file),
and left out, counted and warned about as damaged: it never reaches training.

Folders. Every folder is found by one walk (:func:`robustdistiller.data.files.walk_folder`), which
follows symbolic links (a link farm of speaker folders on several disks is read like one folder),
walks a folder reached twice through links (a cycle) once, and leaves out the folders it cannot
list. Those folders are counted per reason like files: one warning line
``N folders left out of <list>: <reason> (e.g. <path> (<error>))``, and they go to the skipped
JSON and to the per-subset ``left out:`` log line. Transcripts and lists that are not UTF-8 fail
with an error naming the file and the line (:func:`robustdistiller.data.files.read_text`).

Stale lists. When the lists already exist with the same options, every listed file must still
exist (:func:`~.lists.check_listed_files_exist`, one ``stat`` per file): otherwise a
:class:`~.lists.StaleListError` names the list, the count and an example, and says to re-run with
``--force_prep=True``.

Durations come from the file headers (fast). Multichannel and non-16-kHz noise and RIR files are
kept (the consumer converts them at load time with :func:`robustdistiller.data.audio.load_audio`) and
listed in the log.
"""
