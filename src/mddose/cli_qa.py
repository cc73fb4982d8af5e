"""The clinic's commands, ``mddose qa``, ``mddose qa-calibrate`` and ``mddose finetune`` (registered on the app by
:mod:`mddose.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mddose.cli_options import (MAX_SAMPLES, MAX_SEED, MAX_STEPS, MODEL_HELP, SAMPLER_CHOICES, Pretrained, finite,
                                model_and_paths)

QA_HELP = (
    "Check a clinical plan against the dose the model predicts is achievable for this anatomy.\n\n"
    "mddose qa MODEL PATIENT_DIR [PLAN_DOSE] --out OUT, e.g. mddose qa openkbp PATIENT_DIR --out OUT. "
    "PATIENT_DIR: an OpenKBP-layout patient folder or a DICOM folder (imported on the fly); "
    "PLAN_DOSE: the plan's dose.csv or RTDOSE (default: the patient's own dose.csv, or the RTDOSE in the DICOM "
    "folder). Per ROI the clinical DVH metrics of the plan are compared with the achievable ones and flagged "
    "beyond a tolerance made of the model's validation error (qa_errors.json, from qa-calibrate) and the spread "
    "of its samples. Writes qa.json, qa.csv and qa.html; exit 3 with --fail-on-flag when a ROI is flagged."
)


def qa_command(
    paths: Annotated[list[Path], typer.Argument(metavar="MODEL PATIENT_DIR [PLAN_DOSE]", help=f"{MODEL_HELP}.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (qa.json, qa.csv, qa.html).")],
    pretrained: Pretrained = None,
    errors: Annotated[Optional[Path], typer.Option(help="Error table (default: the model's qa_errors.json).")] = None,
    samples: Annotated[int, typer.Option(min=1, max=MAX_SAMPLES, help="Draws per patient, as in predict: "
                                                                      "their mean is the prediction, their spread "
                                                                      "widens the tolerance.")] = 4,
    sampler: Annotated[Optional[str], typer.Option(help=f"{SAMPLER_CHOICES} (default: the model's own).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, max=MAX_STEPS, help="Denoising steps per sample (default: "
                                                                              "the model's own).")] = None,
    z: Annotated[float, typer.Option(min=0.0, max=10.0, callback=finite, help="Tolerance in standard deviations "
                                                                              "(1.645: one-sided 95 %).")] = 1.645,
    gamma: Annotated[bool, typer.Option(help="3%/3mm gamma of the plan against the prediction (pymedphys).")] = True,
    roi_map: Annotated[Optional[Path], typer.Option("--roi-map", help="ROI-name map for a DICOM folder.")] = None,
    fail_on_flag: Annotated[bool, typer.Option("--fail-on-flag", help="Exit 3 when a ROI is flagged.")] = False,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Sampling seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    prescription: Annotated[Optional[list[str]], typer.Option(
        "--prescription", help="A target's stated prescription, TARGET=GY (repeat), e.g. PTV70=60: the prediction "
                               "is scaled from the model's trained levels, V95 counts it.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier qa's output there (files it "
                                                                "did not make are never touched).")] = False,
) -> None:
    from mddose.data.prescriptions import parse_prescription_options
    from mddose.inference.predictor import Predictor
    from mddose.qa.run import FLAGGED_EXIT, run_qa, summary_lines

    model, (patient_dir, *plan) = model_and_paths("qa", paths, pretrained, "PATIENT_DIR [PLAN_DOSE]", range(1, 3))
    predictor = Predictor(model, sampler, steps, samples, seed, device)
    summary = run_qa(predictor, patient_dir, plan[0] if plan else None, out, errors=errors, z=z, gamma=gamma,
                     roi_map=roi_map, prescriptions=parse_prescription_options(prescription), overwrite=overwrite)
    for line in summary_lines(summary, out):
        typer.echo(line)
    if fail_on_flag and summary["flagged"]:
        raise typer.Exit(FLAGGED_EXIT)


def qa_calibrate_command(
    paths: Annotated[list[Path], typer.Argument(metavar="MODEL VAL_DIR", help=f"{MODEL_HELP}; VAL_DIR: validation "
                                                                          "patients with their plans' doses.")],
    pretrained: Pretrained = None,
    predictions: Annotated[Optional[Path], typer.Option(help="Predictions of VAL_DIR already made by this model "
                                                             "(mddose predict): not predicted again.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Table to write (default: qa_errors.json "
                                                                     "beside the weights).")] = None,
    samples: Annotated[int, typer.Option(min=1, max=MAX_SAMPLES, help="Predicted samples per patient (their mean "
                                                                      "is scored).")] = 4,
    sampler: Annotated[Optional[str], typer.Option(help=f"{SAMPLER_CHOICES} (default: the model's own).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, max=MAX_STEPS, help="Denoising steps per sample (default: "
                                                                              "the model's own).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
) -> None:
    """Measure the model's error per ROI and metric on validation patients: the table qa's tolerances use."""
    from mddose.inference.predictor import Predictor
    from mddose.qa.calibrate import calibrate

    model, (val_dir,) = model_and_paths("qa-calibrate", paths, pretrained, "VAL_DIR", range(1, 2))
    table, path = calibrate(Predictor(model, sampler, steps, samples, 0, device), val_dir, out, predictions)
    typer.echo(f"wrote {path}: {len(table.metrics)} ROIs, {table.info['patients']} patients")


def finetune_command(
    paths: Annotated[list[Path], typer.Argument(metavar="MODEL PATIENTS OUT_RUN", help=f"{MODEL_HELP}: the model "
                                                     "to start from; PATIENTS: the clinic's patients with their "
                                                     "planned doses, OpenKBP folders or DICOM folders (CT + RTSTRUCT "
                                                     "+ RTDOSE).")],
    pretrained: Pretrained = None,
    minutes: Annotated[float, typer.Option(min=0.1, max=10_000, help="Training minutes.")] = 10.0,
    val_patients: Annotated[Optional[int], typer.Option(min=2, help="Patients held out to score before and "
                                                                    "after (default: a fifth, at least 2).")] = None,
    roi_map: Annotated[Optional[Path], typer.Option("--roi-map", help="ROI-name map for the DICOM folders.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
) -> None:
    """Adapt a trained model to a clinic's own plans; score it before and after on held-out patients."""
    from mddose.experiments.finetune import finetune, summary_lines

    model, (patients, out_run) = model_and_paths("finetune", paths, pretrained, "PATIENTS OUT_RUN", range(2, 3))
    state = finetune(model, patients, out_run, minutes, val_patients, roi_map, device)
    for line in summary_lines(state, out_run):
        typer.echo(line)
