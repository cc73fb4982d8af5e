"""The report's sections, each an HTML string built from :class:`~mddose.viz.report.ReportSources`.

Scores (headline cards and the method table), per-ROI errors, patients (figures), training, configuration and
run time, metric definitions. Figures are drawn here with :mod:`mddose.viz.figures`,
:mod:`mddose.viz.report_figures` and :func:`mddose.viz.training.plot_history` and saved into ``figures/``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mddose.errors import MddoseError
from mddose.runs.layout import RunFolder
from mddose.viz.report_data import ReportSources, group_roi_errors
from mddose.viz.report_html import card, esc, fmt, grouped_table, image, json_block, table

# (summary key path, label, digits, higher is better)
SCORE_COLUMNS: tuple[tuple[tuple[str, ...], str, int, bool], ...] = (
    (("openkbp", "dose_score"), "OpenKBP dose score (Gy)", 3, False),
    (("openkbp", "dvh_score"), "OpenKBP DVH score (Gy)", 3, False),
    (("paper", "hi_abs_diff"), "|ΔHI|", 3, False),
    (("paper", "dose_score"), "Dose score eq. 8 (%)", 1, False),
    (("paper", "dvh_score"), "DVH score eq. 9 (Gy)", 3, False),
    (("gamma_pass_rate",), "γ 3%/3 mm (%)", 1, True),
)
METRIC_LABELS = {"D_99": "D99", "D_95": "D95", "D_1": "D1", "HI": "HI", "D_0.1_cc": "D0.1cc", "mean": "Dmean"}
STAT_KEYS = {("openkbp", "dose_score"): "openkbp_dose_score", ("paper", "hi_abs_diff"): "hi_abs_diff",
             ("paper", "dose_score"): "paper_dose_score", ("paper", "dvh_score"): "paper_dvh_score",
             ("gamma_pass_rate",): "gamma_pass_rate"}


PREDICTS = {"epsilon": "the noise ε", "sample": "the clean dose x₀", "v_prediction": "v"}


def _predicts(kind: Any) -> str:
    return PREDICTS.get(kind, esc(kind))


def _dash(values: Any) -> str:
    return "–".join(str(v) for v in values) if isinstance(values, (list, tuple)) else esc(values)


def _get(d: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        d = d.get(key) if isinstance(d, dict) else None
    return d


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.nan


def subtitle(found: ReportSources) -> str:
    parts = []
    if found.kind == "demo" and found.demo:
        d = found.demo
        plan = d.get("plan", {})
        parts.append(f"{esc(plan.get('train_patients', '?'))} synthetic training phantoms, "
                     f"{esc(plan.get('test_patients', '?'))} held-out test phantoms (other seed, never seen in "
                     f"training); budget {fmt(d.get('minutes'), 1)} min, finished in "
                     f"{fmt(d.get('seconds', 0) / 60 if d.get('seconds') else None, 1)} min")
    if found.summary is not None:
        parts.append(f"{found.summary.get('n_reference_patients')} reference patients in "
                     f"<code>{esc(found.summary.get('reference_dir'))}</code>")
    if found.run_dir is not None:
        parts.append(f"run <code>{esc(found.run_dir)}</code>")
    return " · ".join(parts)


def scores_section(found: ReportSources) -> str:
    """Headline cards (first two methods' OpenKBP scores) and the table of every method's scores."""
    methods = found.summary["methods"]
    names = list(methods)
    columns = [c for c in SCORE_COLUMNS if any(math.isfinite(_num(_get(m, c[0]))) for m in methods.values())]
    body_rows, best = [], []
    for name in names:
        m = methods[name]
        missing = f" ({m['n_missing']} missing)" if m["n_missing"] else ""
        cells = [esc(name), f"{m['n_patients_scored']}{missing}"]
        for path, _, digits, _ in columns:
            value = fmt(_num(_get(m, path)), digits)
            std = _num(_get(m, ("metrics", STAT_KEYS[path], "std"))) if path in STAT_KEYS else math.nan
            cells.append(value + (f" <span class=\"note\">± {std:.{digits}f}</span>" if math.isfinite(std) else ""))
        body_rows.append(cells)
    for _ in names:
        best.append(set())
    for j, (path, _, _, higher) in enumerate(columns):
        values = [_num(_get(methods[n], path)) for n in names]
        finite = [v for v in values if math.isfinite(v)]
        if len(finite) > 1:
            target = max(finite) if higher else min(finite)
            for i, v in enumerate(values):
                if v == target:
                    best[i].add(j + 2)
    header = ["Method", "Patients"] + [esc(label) for _, label, _, _ in columns]
    cards = ""
    if names:
        first = methods[names[0]]["openkbp"]
        other = methods[names[1]]["openkbp"] if len(names) > 1 else None
        for key, label in (("dose_score", "OpenKBP dose score"), ("dvh_score", "OpenKBP DVH score")):
            a = _num(first.get(key))
            note = esc(names[0])
            win = False
            if other is not None and math.isfinite(_num(other.get(key))):
                b = _num(other[key])
                note += f" · {esc(names[1])}: {fmt(b, 2)} Gy"
                win = a < b
            cards += card(label, f"{fmt(a, 2)} Gy", note, win)
    gamma = found.summary.get("gamma", {})
    notes = "Lower is better except γ. Mean over patients, <span class=\"note\">± sample standard deviation" \
            "</span>; " \
            "the OpenKBP DVH score pools all (patient, ROI, metric) differences, as the challenge does. " \
            "Best value per column in green."
    if not gamma.get("computed"):
        notes += f" γ not computed: {esc(gamma.get('reason'))}."
    return (f'<section id="scores"><h2>Scores</h2><div class="cards">{cards}</div>'
            f"{table(header, body_rows, best, text_columns=1)}<p class=\"note\">{notes}</p></section>")


def roi_section(found: ReportSources, roi_rows: list[dict[str, str]]) -> str:
    """Mean |Δ| per ROI and DVH metric for each method beside the reference's mean value: targets, then OARs."""
    from mddose.data.patient import prescription_from_name

    groups = group_roi_errors(roi_rows)
    if not groups:
        return '<section id="rois"><h2>Per-ROI errors</h2><p class="note">No per_roi.csv rows.</p></section>'
    names = list(found.summary["methods"])
    kinds, order = {}, {}
    for r in roi_rows:
        kinds.setdefault(r["roi"], r["kind"])
        order.setdefault(r["roi"], len(order))
    tables = []
    for kind, metrics, first in (("target", ("D_99", "D_95", "D_1", "HI"), "Target"),
                                 ("oar", ("D_0.1_cc", "mean"), "Organ at risk")):
        rois = [roi for roi in order if kinds[roi] == kind]
        if kind == "target":  # highest prescription first
            rois.sort(key=lambda roi: -(prescription_from_name(roi) or 0.0))
        if not rois:
            continue
        rows, best = [], []
        for roi in rois:
            cells, bold = [esc(roi)], set()
            for metric in metrics:
                entry = groups.get((roi, metric), {})
                digits = 3 if metric == "HI" else 2
                ref = float(np.mean(entry["__reference__"])) if entry.get("__reference__") else math.nan
                means = [float(np.mean(entry[n])) if entry.get(n) else math.nan for n in names]
                finite = [v for v in means if math.isfinite(v)]
                bold |= {len(cells) + 1 + i for i, v in enumerate(means) if len(finite) > 1 and v == min(finite)}
                cells += [fmt(ref, digits)] + [fmt(v, digits) for v in means]
            rows.append(cells)
            best.append(bold)
        subs = ["ref."] + [esc(n).replace("-", "\u2011") for n in names]  # no line break inside "MD-Dose"
        groups_header = [(METRIC_LABELS[m] + ("" if m == "HI" else " (Gy)"), subs) for m in metrics]
        tables.append(grouped_table(first, groups_header, rows, best))
    return ('<section id="rois"><h2>Per-ROI errors</h2><p class="note">For each ROI and metric: the reference '
            "value (<i>ref.</i>, mean over patients) and, under each method's name, its mean absolute error |Δ| "
            "(Gy; unitless for HI). These are the entries of the OpenKBP DVH score, plus the targets' homogeneity "
            "index. Smallest error in green.</p>"
            f'<div class="tables">{"".join(tables)}</div></section>')


def patients_section(found: ReportSources, chosen: list[tuple[str, str]], figures: Path,
                     rows: list[dict[str, str]], progress: bool = False) -> str:
    """For each chosen patient: slices of reference/prediction/error/uncertainty and the DVHs."""
    from mddose.data.openkbp import find_file, read_dose_csv, read_patient
    from mddose.evaluate.folders import find_prediction
    from mddose.viz.figures import dvh_figure, save_png
    from mddose.viz.report_figures import patient_figure

    method = found.primary
    pred_dir = Path(found.summary["methods"][method]["prediction_dir"])
    ref_dir = Path(found.summary["reference_dir"])
    scores = {(r["method"], r["patient_id"]): r for r in rows}
    samples = (found.prediction or {}).get("samples")
    parts = [f'<section id="patients"><h2>Patients</h2><p class="note">{esc(method)} on {len(chosen)} patient(s). '
             "Each row is an axial slice (superior to inferior, anterior up, the patient's right on the left of "
             "the image); dose washes start at 5 % of the colour scale; the error and uncertainty panels carry "
             "the reference's isodose lines. The uncertainty is the per-voxel standard deviation over "
             f"{esc(samples) if samples else 'the'} sampled doses.</p>"]
    for pid, why in tqdm(chosen, desc="report", unit="pt", disable=not progress):
        folder = ref_dir / pid
        pred_path = find_prediction(pred_dir, pid)
        if not folder.is_dir() or pred_path is None:
            parts.append(f'<div class="patient"><h3>{esc(pid)}</h3><p class="note">Skipped: reference '
                         f"or prediction not found ({esc(folder)}, {esc(pred_dir)}).</p></div>")
            continue
        patient = read_patient(folder)
        prediction = read_dose_csv(pred_path, patient.shape)
        unc_path = find_file(pred_dir / "uncertainty", pid)
        uncertainty = read_dose_csv(unc_path, patient.shape) if unc_path else None
        doses = save_png(patient_figure(patient, patient.dose, prediction, uncertainty, method=method),
                         figures / f"{pid}_slices.png")
        dvh = save_png(dvh_figure(patient, patient.dose, {method: prediction},
                                  title=f"{pid}: DVH, reference solid, {method} dashed"), figures / f"{pid}_dvh.png")
        r = scores.get((method, pid), {})
        line = ", ".join(f"{label} {fmt(_num(float(r[key])) if r.get(key) else None, d)}{unit}"
                         for key, label, d, unit in (("openkbp_dose_score", "dose score", 2, " Gy"),
                                                     ("openkbp_dvh_score", "DVH score", 2, " Gy"),
                                                     ("hi_abs_diff", "|ΔHI|", 3, "")))
        why = f"{esc(why)}; " if why else ""
        parts.append(f'<div class="patient"><h3>{esc(pid)} <span class="note">({why}{line})</span></h3>'
                     + image(doses, f"{pid} dose slices", "Reference, prediction, error (prediction − reference) "
                             "and uncertainty on three axial slices through the targets.")
                     + image(dvh, f"{pid} DVH", "Cumulative dose-volume histograms per ROI: reference solid, "
                             "prediction dashed.") + "</div>")
    return "".join(parts) + "</section>"


def training_section(found: ReportSources, figures: Path) -> str:
    from mddose.viz.training import plot_history

    history = found.history or {}
    parts = ['<section id="training"><h2>Training</h2>']
    parts += [f'<p class="warning"><b>Warning:</b> {esc(w["warning"])}.</p>' for w in history.get("warnings", [])]
    parts.append('<div class="grid2"><div>')
    loss = figures / "loss.png"
    model = (found.config or {}).get("model", {})
    if "arch" in model:  # a deterministic baseline
        plot_history(history, loss, f"Training: {model.get('name')}", f"{model.get('loss')} loss (all outputs)")
    else:
        plot_history(history, loss)
    if loss.is_file():
        parts.append(image(loss, "training loss", "Training loss per logged step (log scale)"
                           + (" and the validation dose score" if history.get("validation") else "") + "."))
    else:
        parts.append('<p class="note">No training history (history.json) found.</p>')
    parts.append("</div><div>")
    hist = history.get("history", [])
    steps = _last_step(found.run_dir) or (hist[-1]["step"] if hist else None)
    facts = [("Steps", str(steps) if steps else "–"),
             ("Training time", f"{history['seconds'] / 60:.1f} min" if history.get("seconds") else "–"),
             ("Last logged loss", fmt(hist[-1]["loss"], 5) if hist else "–")]
    best = history.get("best")
    if best:
        facts.append(("Best validation dose score", f"{fmt(best['dose_score'], 3)} Gy at step {best['step']}"))
    parts.append(table(["Training", ""], [[k, v] for k, v in facts], text_columns=2))
    if history.get("validation"):
        parts.append(table(["Step", "Validation dose score (Gy)"],
                           [[str(v["step"]), fmt(v["dose_score"], 3)] for v in history["validation"]]))
    return "".join(parts) + "</div></div></section>"


def _last_step(run_dir: Path | None) -> int | None:
    """The step of the run's last checkpoint (history.json logs only every few steps)."""
    try:
        trainer = RunFolder(run_dir).trainer_state() if run_dir is not None else None
        return int(trainer["step"]) if trainer is not None else None
    except (MddoseError, ValueError, KeyError, TypeError):
        return None


def setup_section(found: ReportSources) -> str:
    """Model, data, diffusion and training settings; prediction settings; run time per stage."""
    parts = ['<section id="setup"><h2>Configuration and run time</h2>']
    if found.config:
        parts.append("<h3>Run</h3>" + table(["Setting", "Value"], _run_rows(found.config), text_columns=2))
    if found.prediction:
        parts.append(_prediction_table(found.prediction))
    demo = found.demo
    if demo and demo.get("stages"):
        parts.append(_demo_timing(demo))
    elif found.summary is not None:
        parts.append(f'<p class="note">Evaluation took {fmt(found.summary.get("elapsed_s"), 1)} s.</p>')
    if found.config:
        parts.append(json_block(found.config, "Full run configuration (config.json)"))
    if demo:
        parts.append(json_block(demo, "demo.json"))
    return "".join(parts) + "</section>"


def _run_rows(cfg: dict[str, Any]) -> list[list[str]]:
    """The run's network, input, diffusion and optimiser, one row each."""
    m, d, diff, t = cfg.get("model", {}), cfg.get("data", {}), cfg.get("diffusion", {}), cfg.get("train", {})
    if "arch" in m:  # a deterministic baseline (mddose.models.baselines)
        kind = "cascade of two U-Nets (C3D-like)" if m.get("arch") == "cascade" else "dense U-Net (HD-UNet-like)"
        rows = [
            ["Network", f"{esc(m.get('name'))}: {kind}, deterministic, {esc(m.get('loss'))} loss"],
            ["Widths", f"{_dash(m.get('widths'))}, depth {esc(m.get('depth'))}"
                       + (f", growth {esc(m.get('growth'))}" if m.get("arch") == "dense" else "")
                       + (f"; 3D, {'×'.join(map(str, m.get('patch_size', ())))} patches"
                          if m.get("dims") == 3 else "; 2D slices")],
        ]
    else:
        rows = [
            ["Network", f"{esc(m.get('name'))}: {esc(m.get('denoiser_block'))} denoiser, "
                        f"{esc(m.get('encoder_block'))} structure encoder, SSM {esc(m.get('ssm_kind'))}"],
            ["Widths (encoder / decoder)", f"{_dash(m.get('enc_widths'))} / {_dash(m.get('dec_widths'))}, depths "
                                           f"{_dash(m.get('enc_depths'))} / {_dash(m.get('dec_depths'))}"],
        ]
    rows.append(["Input", f"{esc(d.get('image_size'))}×{esc(d.get('image_size'))} axial slices, "
                          f"{esc(m.get('cond_channels'))} structure channels, dose / {esc(d.get('dose_norm_gy'))} Gy"])
    if "arch" not in m:
        rows.append(["Diffusion", f"T = {esc(diff.get('num_train_timesteps'))}, {esc(diff.get('beta_schedule'))} "
                                  f"β, the network predicts {_predicts(diff.get('prediction_type'))}, "
                                  f"dose range {esc(diff.get('data_range'))}"])
    rows.append(["Optimiser", f"{esc(t.get('optimizer'))}, lr {esc(t.get('lr'))} ({esc(t.get('lr_schedule'))}), "
                              f"batch {esc(t.get('batch_size'))}, EMA {esc(t.get('ema_decay'))}, seed {esc(t.get('seed'))}"])
    return rows


def _prediction_table(p: dict[str, Any]) -> str:
    per = p.get("mean_seconds_per_patient")
    return "<h3>Prediction</h3>" + table(["Setting", "Value"], [
        ["Sampler", "none: one deterministic forward pass per slice" if p.get("objective") == "regression" else
                    f"{esc(p.get('sampler'))}, {esc(p.get('steps'))} steps, {esc(p.get('samples'))} sample(s) "
                    "per patient (mean = prediction, SD = uncertainty)"],
        ["Device", f"{esc(p.get('device'))}, {fmt(per, 1)} s per patient"],
        ["Checkpoint", f"<code>{esc(p.get('checkpoint'))}</code>"]], text_columns=2)


def _demo_timing(demo: dict[str, Any]) -> str:
    """The demo's stages with their times, and the plan they followed."""
    plan = demo.get("plan", {})
    rows = [[esc(k), f"{v:.1f} s"] for k, v in demo["stages"].items()]
    rows.append(["<b>total</b>", f"<b>{fmt(demo.get('seconds'), 1)} s</b> of a {fmt(plan.get('budget_s'), 0)} s budget"])
    return ("<h3>Run time</h3>" + table(["Stage", "Time"], rows, text_columns=1)
            + f'<p class="note">Plan, from speeds measured before training on {esc(plan.get("device"))}: '
            f"training {fmt(plan.get('seconds_per_step'), 3)} s per step "
            f"({esc(plan.get('train_threads'))} thread(s)), sampling "
            f"{fmt(plan.get('seconds_per_image'), 4)} s "
            f"per slice and network evaluation ({esc(plan.get('predict_threads'))} thread(s)); "
            f"training was given {fmt(plan.get('train_s'), 0)} s, prediction an estimated "
            f"{fmt(plan.get('predict_s'), 0)} s."
            + ("" if "report" in demo["stages"] else " The total does not include making this page.")
            + "</p>")


DEFINITIONS: tuple[tuple[str, str], ...] = (
    ("OpenKBP dose score", "Mean absolute difference between predicted and reference dose over the voxels of the "
     "possible-dose mask, per patient, then averaged over patients (Gy); computed exactly as the OpenKBP "
     "challenge's evaluator."),
    ("OpenKBP DVH score", "Mean absolute difference of DVH metrics, pooled over all patients, ROIs and metrics: "
     "D0.1cc (dose to the hottest 0.1 cm³) and Dmean for organs at risk; D1, D95 and D99 (dose received by at "
     "least 1, 95, 99 % of the volume) for targets (Gy)."),
    ("|ΔHI|", "Absolute difference of the homogeneity index HI = (D2 − D98) / D50 of the highest-prescription "
     "target between prediction and reference (MD-Dose paper, eq. 10)."),
    ("Dose score eq. 8", "The paper's relative dose error made well defined: mean |prediction − reference| / "
     "reference over the voxels receiving at least 10 % of the reference maximum, in %."),
    ("DVH score eq. 9", "Per patient the mean of |ΔD1|, |ΔD95|, |ΔD99| over the targets, then averaged over "
     "patients (Gy)."),
    ("γ 3%/3 mm", "Global gamma pass rate with a 10 % low-dose cut-off (needs pymedphys)."),
    ("Trivial baseline", "Each target filled with its prescription, zero elsewhere: what a model must beat."),
)


def definitions_section() -> str:
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in DEFINITIONS)
    return f'<section id="metrics"><h2>Metric definitions</h2><dl class="defs">{items}</dl></section>'
