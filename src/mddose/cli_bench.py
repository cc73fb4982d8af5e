"""The benchmark and experiment commands: ``mddose bench networks|sampling`` and ``mddose experiment`` (registered
on the app by :mod:`mddose.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mddose.cli_options import MAX_BATCH, MAX_PATIENTS, MAX_SAMPLES, MAX_STEPS, SAMPLER_CHOICES, finite
from mddose.runs.methods import RUN_PRESETS

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that write JSON.")


@bench_app.command("networks")
def bench_networks_command(
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the benchmark JSON.")],
    sizes: Annotated[str, typer.Option(help="Comma-separated image sizes (multiples of 16).")] = "64,128,256",
    repeats: Annotated[int, typer.Option(min=1, max=1000, help="Timed calls per measurement (after one "
                                                                "warm-up).")] = 3,
    preset: Annotated[str, typer.Option(help="Skeleton for the block-type comparison: paper, small or tiny.")] = "small",
    batch: Annotated[int, typer.Option(min=1, max=MAX_BATCH, help="Images per call (times are per image).")] = 1,
    paper: Annotated[bool, typer.Option(help="Also time the paper config per 128x128 slice.")] = True,
    layouts: Annotated[bool, typer.Option(help="Also time training steps of the Mamba / hybrid / conv layouts "
                                               "(batch 8, 128²) and their per-stage split.")] = True,
    scans: Annotated[bool, typer.Option(help="Also time the bare s6 and ssd scans.")] = True,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(min=1, max=1024, help="CPU threads for torch (default: "
                                                                          "torch's).")] = None,
) -> None:
    """Parameters and time per image of each block type at each size, with log-log slopes (JSON)."""
    from mddose.bench.networks import bench_networks

    size_list = _ints(sizes, "--sizes", "sizes must be comma-separated integers")
    if any(s < 16 or s % 16 for s in size_list):
        raise typer.BadParameter("sizes must be positive multiples of 16", param_hint="--sizes")
    if preset not in ("paper", "small", "tiny"):
        raise typer.BadParameter("preset must be paper, small or tiny", param_hint="--preset")
    result = bench_networks(json_out, size_list, repeats, device, preset, batch, paper, scans, threads=threads,
                            layouts=layouts)
    for name, entry in result["block_types"].items():
        times = ", ".join(f"{r['size']}²: {r['forward_s_per_image']:.3f}/{r['forward_backward_s_per_image']:.3f} s"
                          for r in entry["sizes"])
        slopes = "/".join("-" if v is None else f"{v:.2f}" for v in (entry["slope_forward"],
                                                                      entry["slope_forward_backward"]))
        typer.echo(f"{name:9s} {entry['parameters'] / 1e6:6.2f} M  fwd/fwd+bwd {times}  slope {slopes}")
    for kind, row in result.get("paper", {}).items():
        if isinstance(row, dict):
            typer.echo(f"paper-{kind} {row['parameters'] / 1e6:.2f} M: {row['forward_s_per_image']:.3f} s per slice "
                       f"forward, {row['forward_backward_s_per_image']:.3f} s forward+backward")
    typer.echo(f"wrote {json_out}")


@bench_app.command("sampling")
def bench_sampling_command(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (or checkpoint folder).")],
    data_dir: Annotated[Path, typer.Argument(help="Held-out patient folders with reference dose.")],
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the results.")],
    patients: Annotated[Optional[int], typer.Option(min=1, help="Use only the first N patients.")] = None,
    samples: Annotated[int, typer.Option(min=1, max=MAX_SAMPLES, help="Draws per patient.")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
) -> None:
    """Time per patient and dose score for DDPM-1000 against DDIM and DPM-Solver++ at 50, 20 and 10 steps."""
    from mddose.bench.samplers import bench_sampling

    result = bench_sampling(run_dir, data_dir, json_out, n_patients=patients, samples=samples, device=device)
    for row in result["results"]:
        score = f"{row['dose_score']:.3f} Gy" if row["dose_score"] is not None else "n/a"
        typer.echo(f"{row['sampler']:>6} {row['steps']:>5} steps: {row['seconds_per_patient']:8.2f} s/patient, dose score {score}")


def experiment(
    table: Annotated[str, typer.Argument(help="table1 (methods), table2 (parameters, inference time), table3 "
                                              "(denoiser blocks), table4 (structure encoders), layout (Mamba "
                                              "at every / the coarse / no level) or inputs (beam prior, target "
                                              "context).")],
    cache_dir: Annotated[Path, typer.Argument(help="Training cache made by 'mddose prepare' (table2: unused).")],
    data_dir: Annotated[Path, typer.Argument(help="Held-out patient folders with reference dose.")],
    out_dir: Annotated[Path, typer.Argument(help="Experiment folder, one per table (re-running resumes it).")],
    budget_minutes: Annotated[float, typer.Option(min=0.01, callback=finite, help="Training minutes per method "
                                                                                  "(table2: unused).")] = 10.0,
    budget_steps: Annotated[Optional[int], typer.Option(min=1, help="Train every method to this step count "
                                                                    "instead of for --budget-minutes.")] = None,
    preset: Annotated[str, typer.Option(help=f"Base recipe: {', '.join(RUN_PRESETS)}.")] = "tiny",
    config: Annotated[Optional[Path], typer.Option(help="Base RunConfig JSON instead of --preset.")] = None,
    sampler: Annotated[str, typer.Option(help=f"{SAMPLER_CHOICES}, for every diffusion model.")] = "dpm++",
    steps: Annotated[int, typer.Option(min=1, max=MAX_STEPS, help="Sampler steps for every diffusion model.")] = 10,
    samples: Annotated[int, typer.Option(min=1, max=MAX_SAMPLES, help="Draws averaged per patient (diffusion "
                                                                      "models).")] = 1,
    time_patients: Annotated[int, typer.Option(min=1, max=MAX_PATIENTS, help="table2: patients of DATA_DIR to "
                                                                             "time.")] = 2,
    baselines_3d: Annotated[bool, typer.Option("--baselines-3d", help="table1/table2: C3D-like and HD-UNet-like "
                                                                      "in 3D instead of 2D.")] = False,
    patch_3d: Annotated[Optional[str], typer.Option(help="With --baselines-3d: training patch and sliding window, "
                                                         "X,Y,Z voxels (default 64,64,64).")] = None,
    only: Annotated[Optional[list[str]], typer.Option(help="Run only this row (repeatable), by its name in the "
                                                          "table, e.g. HD-UNet-like; the table's reference row "
                                                          "(MD-Dose, beam-prior for inputs) always runs.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
) -> None:
    """Run one of the paper's tables: same data, seed and budget per method, then paired t-tests."""
    from mddose.experiments.tables import run_experiment
    from mddose.runs.run_config import load_run_config, run_preset

    base = load_run_config(config) if config else run_preset(preset)
    patch = _int_triple(patch_3d, "--patch-3d") if patch_3d else None
    result = run_experiment(table, cache_dir, data_dir, out_dir, budget_minutes, base, sampler=sampler, steps=steps,
                            samples=samples, device=device, time_patients=time_patients, budget_steps=budget_steps,
                            baselines_3d=baselines_3d, patch_3d=patch, only=only)
    for name, score in result.get("scores", {}).items():
        typer.echo(f"{name:>16}: dose score {score['dose_score']:.3f} Gy, DVH score {score['dvh_score']:.3f} Gy")
    for name, m in result["methods"].items() if table == "table2" else ():
        typer.echo(f"{name:>16}: {m['parameters'] / 1e6:.2f} M parameters, {m['seconds_per_slice']:.3f} s per slice, "
                   f"{m['seconds_per_patient']:.2f} s per patient")
    typer.echo(f"table: {out_dir / (table + '.md')}")


def _ints(text: str, option: str, problem: str) -> tuple[int, ...]:
    """Comma-separated integers, or ``problem`` as the option's usage error."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(problem, param_hint=option) from None


def _int_triple(text: str, option: str) -> tuple[int, int, int]:
    problem = f"expected three integers X,Y,Z, not {text!r}"
    values = _ints(text, option, problem)
    if len(values) != 3:
        raise typer.BadParameter(problem, param_hint=option)
    return values  # type: ignore[return-value]
