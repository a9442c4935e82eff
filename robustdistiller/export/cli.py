"""The export command: ``python -m robustdistiller.export <checkpoint> <output folder> [options]``."""

import argparse
import logging
import sys

from robustdistiller.export.errors import ExportError
from robustdistiller.export.folder import MANIFEST_FILE
from robustdistiller.export.layout import S3PRL_FILE
from robustdistiller.export.loading import load_student
from robustdistiller.export.onnx import format_onnx_parity
from robustdistiller.export.onnx_quantization import INT8_MODES
from robustdistiller.export.student_folder import export_student
from robustdistiller.export.verify import format_verification, verify_export
from robustdistiller.runs.write_errors import WriteFailedError


def main(argv=None):
    """Command line: ``python -m robustdistiller.export <checkpoint> <output folder>``."""
    parser = argparse.ArgumentParser(
        description="Export a trained student for SpeechBrain, transformers and (optionally) s3prl."
    )
    parser.add_argument(
        "checkpoint", help="training output/save/CKPT folder, student.ckpt, s3prl .ckpt, DPHuBERT .pth, DPWavLM run"
    )
    parser.add_argument("output", help="export folder (created; must be empty unless --overwrite)")
    parser.add_argument("--s3prl", action="store_true", help=f"also write {S3PRL_FILE}")
    parser.add_argument("--no-heads", action="store_true", help="leave out the prediction heads")
    parser.add_argument("--onnx", action="store_true", help="also write onnx/encoder.onnx (ONNX Runtime)")
    parser.add_argument(
        "--int8",
        nargs="?",
        const="all",
        choices=INT8_MODES,
        help="also write onnx/encoder_int8.onnx (implies --onnx): 'all' (the default) static int8 of the whole "
        "student, CNN included, calibrated on speech-like audio; 'matmul' dynamic int8 of the matrix products only",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace an earlier, unmodified export in the output folder (the files its {MANIFEST_FILE} lists)",
    )
    parser.add_argument("--verify", action="store_true", help="reload six ways in fresh processes and compare")
    parser.add_argument(
        "--hf-inexact",
        choices=("skip", "warn", "refuse"),
        default="skip",
        help="DPWavLM: when the padded transformers.WavLMModel copy cannot be exact (the CNN channels were gated "
        "during pruning), leave it out (default), write it anyway with a warning, or fail",
    )
    parser.add_argument(
        "--results",
        metavar="REPORT_JSON",
        help="a cross-task report's report.json (python -m robustdistiller.report): the model card's model-index "
        "gets this model's numbers per task and condition",
    )
    parser.add_argument(
        "--results-upstream",
        metavar="NAME",
        help="this model's upstream name in --results (default: the upstream whose runs loaded this checkpoint or "
        "the export folder)",
    )
    args = parser.parse_args(argv)
    if args.results_upstream and not args.results:
        parser.error("--results-upstream names an upstream of --results REPORT_JSON; give --results too")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        result = export_student(
            args.checkpoint,
            args.output,
            include_heads=not args.no_heads,
            s3prl=args.s3prl,
            overwrite=args.overwrite,
            onnx=args.onnx,
            int8=args.int8,
            hf_inexact=args.hf_inexact,
            results=args.results,
            results_upstream=args.results_upstream,
        )
        print(f"Exported to {result['folder']}: {', '.join(result['files'])}")
        if result["onnx_parity"] is not None:
            print(format_onnx_parity(result["onnx_parity"]))
        if "hf_copy" in result:
            copy_report = result["hf_copy"]
            print(
                f"transformers copy: {'written' if copy_report['written'] else 'not written'} (max abs difference "
                f"{copy_report['max_abs_error']:.3g})"
            )
            if args.verify:
                print(
                    "--verify: the fresh-process checks are for DistilHuBERT-layout exports; this DPWavLM export's "
                    "transformers copy was checked against the model above, dpwavlm.pth is the source file itself"
                )
        elif args.verify:
            print("verifying: loading the student to compare with ...", flush=True)
            student, _ = load_student(args.checkpoint)
            progress = lambda line: print(line, flush=True)  # noqa: E731 - the fresh processes take ~20 s
            print(format_verification(verify_export(result["folder"], student, progress=progress)))
    except (ExportError, ValueError, WriteFailedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
