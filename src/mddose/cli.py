"""The ``mddose`` command line: parses arguments and calls one typed function per command, nothing more.

Commands by stage (like nnU-Net's): data (``phantom``, ``prepare``, ``import-dicom``), models (``train``,
``refine``, ``predict``, ``baseline``, ``pretrained export``), judging (``evaluate``, ``report``, ``experiment``, ``bench
networks``, ``bench sampling``), clinic (``qa``, ``qa-calibrate``, ``export-dicom``, ``export-nifti``) and
``demo``; the benchmark and experiment commands are in :mod:`mddose.cli_bench`, the QA ones in
:mod:`mddose.cli_qa`, the DICOM and NIfTI ones in :mod:`mddose.cli_dicom`. ``mddose --verbose COMMAND`` logs at
debug level.
Errors in user input print one line (``error: <file>: <what is wrong>``) and exit with status 1; usage errors
exit with 2, ``qa --fail-on-flag`` with 3 when it flags a ROI, Ctrl-C with 130.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer

from mddose import cli_bench, cli_dicom, cli_qa
from mddose.cli_options import (
    MAX_BATCH,
    MAX_PATIENTS,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_SMOOTH_MM,
    MAX_STEPS,
    MODEL_HELP,
    SAMPLER_CHOICES,
    Overwrite,
    Pretrained,
    finite,
    model_and_paths,
    refiner_choice,
)
from mddose.errors import MddoseError
from mddose.runs.methods import DEFAULT_PRESET, RUN_PRESETS, baselines_help

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Radiotherapy dose prediction with MD-Dose: data, training, prediction, evaluation, plan QA.")
try:  # a typer that vendors click raises its own click's exceptions, all of them TyperExceptions
    from typer.exceptions import TyperException as _TyperClickException
except ImportError:  # an older typer runs on the click package
    _TyperClickException = click.exceptions.ClickException
app.add_typer(cli_bench.bench_app, name="bench")


@app.callback()
def _options(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at debug level.")] = False) -> None:
    """Radiotherapy dose prediction with MD-Dose."""
    if verbose:
        logging.getLogger().setLevel(logging.DEBUG)

pretrained_app = typer.Typer(no_args_is_help=True, help="The models shipped with mddose.")
app.add_typer(pretrained_app, name="pretrained")


@app.command()
def phantom(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write pt_N/ patient folders into.")],
    patients: Annotated[int, typer.Option("--patients", "-n", min=1, max=MAX_PATIENTS, help="Number of "
                                                                                          "patients.")] = 10,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Random seed: same seed, same files.")] = 0,
    grid: Annotated[int, typer.Option(help="Grid size: 64 or 128 voxels per side.")] = 128,
    overwrite: Overwrite = False,
) -> None:
    """Write synthetic head-and-neck phantoms (anatomy + physically modelled dose) in OpenKBP layout."""
    from mddose.data.phantom import write_phantoms

    if grid not in (64, 128):
        raise typer.BadParameter("grid must be 64 or 128", param_hint="--grid")
    paths = write_phantoms(out_dir, n_patients=patients, seed=seed, grid=grid, overwrite=overwrite)
    typer.echo(f"wrote {len(paths)} phantom patients to {out_dir}")


@app.command()
def prepare(
    data_dir: Annotated[Path, typer.Argument(help="Folder of OpenKBP patient folders (pt_N/).")],
    cache_dir: Annotated[Path, typer.Argument(help="Cache folder to create or complete.")],
) -> None:
    """Convert patients into the compact training cache plus an index of usable axial slices."""
    from mddose.data.cache import prepare_cache

    summary = prepare_cache(data_dir, cache_dir)
    typer.echo(
        f"cache {cache_dir}: {summary['n_patients']} patients ({summary['added']} added), "
        f"{summary['n_slices']} slices, {summary['size_mib']:.1f} MiB"
    )


@app.command()
def evaluate(
    reference_dir: Annotated[Path, typer.Argument(help="OpenKBP split with the reference doses (pt_N/dose.csv).")],
    prediction_dirs: Annotated[
        list[Path], typer.Argument(help="One folder per method: pt_N.csv in the OpenKBP submission format.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for summary.json, CSVs, table, figures.")],
    name: Annotated[
        list[str] | None, typer.Option("--name", help="Method name per prediction folder, in order (repeat).")
    ] = None,
    against: Annotated[
        str | None, typer.Option(help="Method the paired t-tests compare with (default: the first).")
    ] = None,
    figures: Annotated[bool, typer.Option("--figures", help="Write dose-wash, Fig. 3 and DVH PNGs.")] = False,
    figure_patient: Annotated[
        list[str] | None, typer.Option("--figure-patient", help="Only these patients get figures (repeat).")
    ] = None,
    gamma: Annotated[bool, typer.Option(help="3%/3mm gamma pass rate (needs pymedphys).")] = True,
    overwrite: Overwrite = False,
) -> None:
    """Score prediction folders against reference doses: OpenKBP scores, paper metrics, t-tests, figures."""
    from mddose.evaluate.folders import evaluate as evaluate_folders
    from mddose.viz.figures import evaluation_figures

    summary = evaluate_folders(reference_dir, prediction_dirs, out, names=name, against=against,
                               figures=evaluation_figures if figures else None,
                               figure_patients=figure_patient, gamma=gamma, overwrite=overwrite)
    for method, s in summary["methods"].items():
        openkbp = s["openkbp"]
        missing = f"; MISSING {s['n_missing']}: {', '.join(s['missing'])}" if s["n_missing"] else ""
        typer.echo(f"{method}: {s['n_patients_scored']}/{summary['n_reference_patients']} patients scored, "
                   f"OpenKBP dose score {openkbp['dose_score']:.4f} Gy, DVH score {openkbp['dvh_score']:.4f} Gy"
                   f"{missing}")
    typer.echo(f"wrote {out / 'summary.json'} ({summary['elapsed_s']:.1f} s)")


@app.command()
def train(
    cache_dir: Annotated[Path, typer.Argument(help="Cache made by 'mddose prepare'.")],
    run_dir: Annotated[Path, typer.Argument(help="Run folder: config, checkpoints, loss curve.")],
    config: Annotated[Optional[Path], typer.Option(help="RunConfig JSON (may name a 'preset' and override parts).")] = None,
    preset: Annotated[str, typer.Option(help=f"{', '.join(RUN_PRESETS)} (when no --config).")] = DEFAULT_PRESET,
    method: Annotated[str, typer.Option(help=baselines_help())] = "md-dose",
    max_steps: Annotated[Optional[int], typer.Option(min=1, help="Stop at this total step count.")] = None,
    minutes: Annotated[Optional[float], typer.Option(min=0.0, callback=finite, help="Stop after this many minutes "
                                                                                    "of this invocation.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's last checkpoint.")] = False,
    decay_steps: Annotated[Optional[int], typer.Option(min=1, help="Stretch the learning-rate schedule to end at "
                                                                   "this step (a resumed run at its floor climbs "
                                                                   "back to the stretched curve); the default stop "
                                                                   "moves with it; kept in the run's config.")] = None,
    init_from: Annotated[Optional[Path], typer.Option(
        help="Start a new run from these weights (a checkpoint folder, or src/mddose/weights/openkbp): fresh "
             "optimizer, a new warm-up, steps counted on; needs --decay-steps. --config (default: the weights' "
             "own) may add input channels, which start at zero weight.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
) -> None:
    """Train MD-Dose (or a baseline) on a cache (under torchrun: multi-GPU DDP)."""
    from mddose.runs.run_config import load_run_config, method_config, run_preset
    from mddose.training.loop import train as run_training

    own = resume or (init_from is not None and config is None)  # the checkpoint's own config
    cfg = None if own else (load_run_config(config) if config else run_preset(preset))
    if cfg is not None and method != "md-dose":
        cfg = method_config(method, cfg)
    result = run_training(cache_dir, run_dir, cfg, max_steps=max_steps, minutes=minutes, resume=resume, device=device,
                          decay_steps=decay_steps, init_from=init_from)
    best = result["best"]
    typer.echo(f"trained to step {result['step']} in {result['seconds']:.0f} s; "
               f"best validation dose score: {best['dose_score']:.3f} Gy at step {best['step']}" if best else
               f"trained to step {result['step']} in {result['seconds']:.0f} s")
    if result["warning"]:
        typer.echo(f"WARNING: {result['warning']}", err=True)


@app.command()
def predict(
    paths: Annotated[list[Path], typer.Argument(metavar="MODEL DATA_DIR OUT_DIR", help=f"{MODEL_HELP}; DATA_DIR: "
                                                     "patient folders (OpenKBP layout); OUT_DIR: predictions.")],
    pretrained: Pretrained = None,
    sampler: Annotated[Optional[str], typer.Option(help=f"{SAMPLER_CHOICES} (default: the model's own, e.g. "
                                                         "ddim for the shipped model).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, max=MAX_STEPS, help="Denoising steps (default: the "
                                                 "model's own; ddpm: 1000 as in the paper).")] = None,
    samples: Annotated[int, typer.Option(min=1, max=MAX_SAMPLES, help="Draws per patient: mean = prediction, std = "
                                                                      "uncertainty.")] = 1,
    batch_size: Annotated[Optional[int], typer.Option(min=1, max=MAX_BATCH, help="Slices per batch (default: 32 on "
                                                                                   "a GPU, 8 on a CPU).")] = None,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Sampling seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    mirror: Annotated[bool, typer.Option(help="Also predict each patient mirrored left-right (paired organs "
                                              "swapped) and average the two: twice the time.")] = False,
    smooth_mm: Annotated[Optional[float], typer.Option(
        min=0, max=MAX_SMOOTH_MM, callback=finite, help="Gaussian sigma (mm) across slices inside the possible-dose "
                                                        "mask (default: the model's; 0: none).")] = None,
    prescription: Annotated[Optional[list[str]], typer.Option(
        "--prescription", help="A target's stated prescription, TARGET=GY (repeat), e.g. PTV70=60: the model's "
                               "dose is scaled from its trained levels.")] = None,
    refiner: Annotated[Optional[Path], typer.Option(help="A 3D refinement stage trained for MODEL by 'mddose "
                                                          "refine': it corrects the stacked slices in place of the "
                                                          "smoothing (default: MODEL's own, when it ships one).")] = None,
    no_refiner: Annotated[bool, typer.Option("--no-refiner", help="Predict without MODEL's own refiner (the "
                                                                  "smoothing instead).")] = False,
    overwrite: Overwrite = False,
) -> None:
    """Predict the dose of every patient in DATA_DIR, in the OpenKBP submission format (and NIfTI)."""
    from mddose.data.prescriptions import parse_prescription_options
    from mddose.inference.predict import predict as run_predict
    run_dir, (data_dir, out_dir) = model_and_paths("predict", paths, pretrained, "DATA_DIR OUT_DIR", range(2, 3))
    stated = parse_prescription_options(prescription)
    summary = run_predict(run_dir, data_dir, out_dir, sampler, steps, samples, batch_size, seed, device,
                          mirror=mirror, smooth_mm=smooth_mm, prescriptions=stated, overwrite=overwrite,
                          refiner=refiner_choice(refiner, no_refiner))
    typer.echo(f"predicted {summary['n_patients']} patients into {out_dir} "
               f"({summary['mean_seconds_per_patient']} s per patient on {summary['device']})")


@app.command()
def refine(
    paths: Annotated[list[Path], typer.Argument(metavar="MODEL CACHE_DIR OUT_DIR", help=f"{MODEL_HELP}; CACHE_DIR: "
                                                     "its training cache; OUT_DIR: the refiner.")],
    sampler: Annotated[Optional[str], typer.Option(help=f"{SAMPLER_CHOICES}: how MODEL's doses are sampled, as "
                                                         "it will predict (default: its own).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, max=MAX_STEPS, help="MODEL's denoising steps (default: "
                                                                            "its own).")] = None,
    train_steps: Annotated[int, typer.Option(min=1, max=1_000_000, help="The refiner's training steps.")] = 1000,
    minutes: Annotated[Optional[float], typer.Option(min=0.0, callback=finite, help="Stop training after this "
                                                     "many minutes (the first stage's doses not counted).")] = None,
    patch: Annotated[int, typer.Option(min=16, max=256, help="Training crop and sliding window: a cube of this "
                                                             "many voxels (a multiple of 8).")] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
) -> None:
    """Train a 3D refinement stage for MODEL: it corrects the model's stacked slice predictions (predict --refiner)."""
    from mddose.models.refiner import RefinerConfig
    from mddose.training.refine import RefineConfig, train_refiner

    run_dir, (cache_dir, out_dir) = model_and_paths("refine", paths, None, "CACHE_DIR OUT_DIR", range(2, 3))
    cfg = RefineConfig(model=RefinerConfig(patch=(patch, patch, patch)), steps=train_steps)
    info = train_refiner(run_dir, cache_dir, out_dir, cfg, sampler, steps, minutes=minutes, device=device)
    typer.echo(f"trained a refiner for {info['first_stage']['checkpoint']} on {info['patients']} patients: "
               f"{info['steps_done']} steps in {info['seconds']:.0f} s, into {out_dir}")


@pretrained_app.command("export")
def pretrained_export(
    run_dir: Annotated[Path, typer.Argument(help="The shipped model's run folder (runs/openkbp), or the shipped "
                                                 "model's name (to ship a --refiner for its weights).")],
    val_dir: Annotated[Path, typer.Argument(help="Validation patients with reference doses.")],
    name: Annotated[str, typer.Option(help="Pretrained model name.")] = "openkbp",
    sampler: Annotated[Optional[str], typer.Option(help="Sampler for scoring (default: the model's own).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, max=MAX_STEPS, help="Sampler steps (default: the model's "
                                                                              "own).")] = None,
    keep: Annotated[Optional[Path], typer.Option(help="Keep the predictions (pred/) and evaluation (eval/) "
                                                      "here.")] = None,
    note: Annotated[Optional[str], typer.Option(help="A line for the model card about this stretch (e.g. what "
                                                      "changed in the recipe).")] = None,
    refiner: Annotated[Optional[Path], typer.Option(help="A 3D refinement stage trained for these weights by "
                                                         "'mddose refine': scored with them, shipped with them.")] = None,
) -> None:
    """Score a run on the validation patients, log the stretch and ship its weights if they validate better."""
    from mddose.experiments.shipping import export_run
    from mddose.inference.pretrained import model_folder

    row = export_run(model_folder(run_dir), val_dir, name, sampler=sampler, steps=steps, keep=keep, note=note,
                     refiner=refiner)
    typer.echo(f"step {row['steps']}: dose score {row['dose_score']:.3f} Gy, DVH score {row['dvh_score']:.3f} Gy "
               f"on {row['patients']} patients; {'shipped' if row['shipped'] else 'not better: weights kept'}")


@app.command()
def baseline(
    data_dir: Annotated[Path, typer.Argument(help="Folder of patient folders (OpenKBP layout).")],
    out_dir: Annotated[Path, typer.Argument(help="Where pt_N.csv predictions are written.")],
    overwrite: Overwrite = False,
) -> None:
    """Write the trivial baseline (each target filled with its prescription, zero elsewhere) for comparison."""
    from mddose.inference.trivial import predict_trivial

    written = predict_trivial(data_dir, out_dir, overwrite=overwrite)
    typer.echo(f"wrote {len(written)} trivial-baseline predictions to {out_dir}")


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Argument(help="Folder for the demo (--overwrite replaces an earlier demo).")] = Path(
        "mddose-demo"),
    minutes: Annotated[float, typer.Option(min=0.5, max=24 * 60, callback=finite, help="Time budget for "
                                                                                      "everything, in minutes.")] = 5.0,
    train_patients: Annotated[
        Optional[int], typer.Option(min=2, max=MAX_PATIENTS, help="Training phantoms (default: 16 at 5 minutes, "
                                                                  "fewer below).")
    ] = None,
    test_patients: Annotated[Optional[int], typer.Option(min=1, max=MAX_PATIENTS, help="Held-out test phantoms "
                                                                                        "(default 3).")] = None,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed for phantoms, training and sampling.")] = 0,
    device: Annotated[str, typer.Option(help="auto (a GPU when present), cpu, cuda, cuda:N.")] = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Phantoms → train a small MD-Dose → predict held-out phantoms → evaluate → report, within --minutes."""
    from mddose.experiments.demo import run_demo

    info = run_demo(out_dir, minutes, train_patients, test_patients, seed, device, overwrite=overwrite)
    typer.echo(f"\ndemo finished in {info['seconds'] / 60:.1f} min (budget {minutes:g} min)")
    for name, s in info["scores"].items():
        typer.echo(f"  {name:17s} OpenKBP dose score {s['dose_score']:6.2f} Gy   DVH score {s['dvh_score']:6.2f} Gy")
    if info["train"].get("warning"):
        typer.echo(f"WARNING: {info['train']['warning']}", err=True)
    typer.echo(f"report: {info['report']}")


@app.command()
def report(
    source: Annotated[Path, typer.Argument(help="An evaluation folder (summary.json), a run folder or a demo folder.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Report folder (default: SOURCE/report).")] = None,
    patients: Annotated[int, typer.Option(min=0, max=100, help="Patients shown in figures (best to worst dose "
                                                                 "score).")] = 3,
    patient: Annotated[
        Optional[list[str]], typer.Option("--patient", help="Show these patients instead (repeat).")
    ] = None,
    method: Annotated[
        Optional[str], typer.Option(help="Method shown in the patient figures (default: the first).")
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Write report.html (+ PNGs): scores, per-ROI errors, dose slices, DVHs, training curve, configuration."""
    from mddose.viz.report import build_report

    typer.echo(f"wrote {build_report(source, out, patients, patient, method, overwrite=overwrite)}")


app.command("experiment")(cli_bench.experiment)
app.command("qa", help=cli_qa.QA_HELP)(cli_qa.qa_command)
app.command("qa-calibrate")(cli_qa.qa_calibrate_command)
app.command("finetune")(cli_qa.finetune_command)
app.command("import-dicom", help=cli_dicom.IMPORT_HELP)(cli_dicom.import_dicom_command)
app.command("export-dicom", help=cli_dicom.EXPORT_HELP)(cli_dicom.export_dicom_command)
app.command("export-nifti")(cli_dicom.export_nifti_command)


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # --verbose lowers it (see _options)


INTERRUPTED = 130


def _end_progress_bars() -> None:
    """Close the progress bars an error left open, so that the error's line is a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main() -> None:
    """Console entry point: one clear line and exit status 1 for bad input."""
    _configure_logging()
    try:
        rv = app(standalone_mode=False)
    except MddoseError as e:
        _end_progress_bars()
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except (_TyperClickException, click.exceptions.ClickException) as e:
        e.show()
        sys.exit(e.exit_code)
    except (typer.Abort, click.exceptions.Abort, KeyboardInterrupt):
        rv = INTERRUPTED
    except OSError as e:  # a read-only or missing folder: the file and the system's reason (writes name theirs)
        _end_progress_bars()
        where = e.filename or "output"
        typer.echo(f"error: {where}: {e.strerror or str(e).splitlines()[0]}", err=True)
        sys.exit(1)
    if rv == INTERRUPTED:  # Ctrl-C (typer turns it into this exit status itself)
        typer.echo("interrupted: files already finished are complete, the one being written was not kept",
                   err=True)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
