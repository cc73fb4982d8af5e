"""Never lose a user's data (issue 32, findings 1–6, 17 and 18): no command deletes, moves, overwrites or mixes
what it did not make. Each case runs the command as a user did, and checks the exit status, the one line, and
that every file of the user is byte-identical afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mddose.atomic import INCOMPLETE
from mddose.ownership import OWNER
from tests.qa.helpers import stated_table
from tests.reliability.conftest import assert_clean_error, snapshot


def _start(args: list[object], wait_for: Path | str, folder: Path, timeout: float = 600.0) -> subprocess.Popen:
    """Start ``mddose args`` and return once ``wait_for`` (a path, or a glob in ``folder``) exists."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mddose.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + timeout
    found = (lambda: wait_for.exists()) if isinstance(wait_for, Path) else (lambda: any(folder.glob(wait_for)))
    while not found() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not found():
        proc.kill()
        pytest.fail(f"{wait_for} did not appear (exit {proc.wait()}): {proc.stderr.read()[-500:]}")
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.communicate(timeout=120)


@pytest.fixture
def errors(tmp_path: Path) -> Path:
    return stated_table().save(tmp_path / "errors.json")


@pytest.fixture(scope="module")
def evaluation(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An evaluation of the trivial baseline on the phantom split (with figures)."""
    from mddose.evaluate.folders import evaluate
    from mddose.inference.trivial import predict_trivial
    from mddose.viz.figures import evaluation_figures

    root = tmp_path_factory.mktemp("evaluation")
    predict_trivial(world["data"], root / "trivial", progress=False)
    evaluate(world["data"], [root / "trivial"], root / "eval", gamma=False, figures=evaluation_figures,
             figure_patients=["pt_1"], progress=False)
    return root / "eval"


def test_1_qa_never_replaces_a_patient_or_a_folder_of_patients(world: dict[str, Path], data_copy: Path,
                                                              tmp_path: Path, errors: Path, mddose) -> None:
    (data_copy / "notes.txt").write_text("mine")
    before = snapshot(data_copy)
    patient = data_copy / "pt_1"
    assert_clean_error(mddose("qa", "openkbp", patient, "--out", patient), "pt_1",
                       "is also an input")
    assert_clean_error(mddose("qa", world["run"], patient, "--out", data_copy, "--errors", errors),
                       "holds an input")
    result = mddose("qa", world["run"], world["data"] / "pt_2", "--out", data_copy, "--errors", errors)
    assert_clean_error(result, str(data_copy), "mddose qa did not make", "notes.txt")
    assert snapshot(data_copy) == before
    assert not list(tmp_path.glob(".data.*.tmp"))


def test_2_report_and_evaluate_never_replace_foreign_folders(world: dict[str, Path], data_copy: Path,
                                                             evaluation: Path, tmp_path: Path, mddose) -> None:
    (data_copy / "notes.txt").write_text("mine")
    afile = tmp_path / "afile"
    afile.write_text("mine")
    eval_copy = Path(shutil.copytree(evaluation, tmp_path / "eval"))
    plots = tmp_path / "plots"
    (plots / "figures").mkdir(parents=True)
    (plots / "figures" / "my_plot.png").write_bytes(b"\x89PNG mine")
    before = snapshot(data_copy, afile, eval_copy, plots)
    assert_clean_error(mddose("report", eval_copy, "--out", data_copy), "mddose report did not make", "notes.txt")
    assert_clean_error(mddose("report", eval_copy, "--out", eval_copy), "holds an input")
    assert_clean_error(mddose("report", eval_copy, "--out", afile), "afile", "not a folder")
    for out in (plots, eval_copy):  # a folder of the user's, and an evaluation the user added a plot to
        shutil.copy(plots / "figures" / "my_plot.png", eval_copy / "figures" / "my_plot.png")
        before[str(eval_copy / "figures" / "my_plot.png")] = before[str(plots / "figures" / "my_plot.png")]
        result = mddose("evaluate", world["data"], world["data"], "--out", out, "--figures", "--no-gamma",
                        "--overwrite")
        assert_clean_error(result, "mddose evaluate did not make", "figures/my_plot.png")
    assert snapshot(data_copy, afile, eval_copy, plots) == before
    assert not list(tmp_path.glob(".afile*"))  # nothing moved aside either


def test_2_an_earlier_report_or_evaluation_is_replaced_only_when_asked(world: dict[str, Path], evaluation: Path,
                                                                       tmp_path: Path, mddose) -> None:
    eval_copy = Path(shutil.copytree(evaluation, tmp_path / "eval"))
    assert mddose("report", eval_copy, "--patients", "1").code == 0
    before = snapshot(eval_copy)
    assert_clean_error(mddose("report", eval_copy, "--patients", "1"), "earlier mddose report", "--overwrite")
    assert snapshot(eval_copy) == before
    assert mddose("report", eval_copy, "--patients", "1", "--overwrite").code == 0
    trivial = Path(evaluation.parent / "trivial")
    assert_clean_error(mddose("evaluate", world["data"], trivial, "--out", eval_copy, "--no-gamma"),
                       "earlier mddose evaluate", "--overwrite")
    result = mddose("evaluate", world["data"], trivial, "--out", eval_copy, "--no-gamma", "--overwrite")
    assert result.code == 0, result.err
    assert (eval_copy / "report" / "report.html").is_file()  # another command's folder inside: left alone
    assert not (eval_copy / "figures").exists()  # the earlier evaluation's own figures went with it


def test_3_phantom_never_replaces_real_patients(data_copy: Path, tmp_path: Path, mddose) -> None:
    before = snapshot(data_copy)
    result = mddose("phantom", data_copy, "--patients", "1", "--grid", "64")
    assert_clean_error(result, str(data_copy), "mddose phantom did not make", "pt_1/")
    assert snapshot(data_copy) == before
    assert mddose("phantom", tmp_path / "ph", "--patients", "1", "--grid", "64").code == 0
    assert_clean_error(mddose("phantom", tmp_path / "ph", "--patients", "1", "--grid", "64"), "--overwrite")
    assert mddose("phantom", tmp_path / "ph", "--patients", "1", "--grid", "64", "--overwrite").code == 0


def test_4_prepare_never_mixes_another_patient_of_the_same_id(world: dict[str, Path], tmp_path: Path,
                                                               mddose) -> None:
    cache = Path(shutil.copytree(world["cache"], tmp_path / "cache"))
    assert mddose("phantom", tmp_path / "ph1", "--patients", "1", "--grid", "64", "--seed", "1").code == 0
    before = snapshot(cache)
    result = mddose("prepare", tmp_path / "ph1", cache)
    assert_clean_error(result, "pt_1.npz.xz", "holds another pt_1", str(world["data"] / "pt_1"))
    assert snapshot(cache) == before
    again = mddose("prepare", world["data"], cache)  # its own source: nothing to add, the source kept
    assert again.code == 0 and "(0 added)" in again.out, again.err
    assert '"source": "' + str(world["data"]) in (cache / "cache.json").read_text()


def test_5_one_writer_per_folder(world: dict[str, Path], tmp_path: Path, mddose) -> None:
    out = tmp_path / "p"
    inputs = snapshot(world["data"], world["run"])
    first = _start(["predict", world["run"], world["data"], out, "--steps", "400", "--sampler", "ddim",
                    "--device", "cpu"], out / INCOMPLETE, out)
    try:
        second = mddose("predict", world["run"], world["data"], out, "--steps", "1", "--device", "cpu")
        assert_clean_error(second, str(out), f"mddose predict (pid {first.pid}) is writing into this folder")
        assert (out / INCOMPLETE).is_file()  # the second one left the first one's marker alone
        assert_clean_error(mddose("baseline", world["data"], out), f"(pid {first.pid})")
    finally:
        _kill(first)
    # a dead writer's lock does not block: its unfinished folder is predicted again, whole
    third = mddose("predict", world["run"], world["data"], out, "--steps", "1", "--device", "cpu")
    assert third.code == 0, third.err
    assert not (out / INCOMPLETE).exists() and (out / "prediction.json").is_file()
    assert snapshot(world["data"], world["run"]) == inputs


def test_6_predict_never_mixes_into_another_methods_folder(world: dict[str, Path], tmp_path: Path,
                                                           mddose) -> None:
    other = tmp_path / "baseline"
    assert mddose("baseline", world["data"], other).code == 0
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "pt_9.csv").write_text(",data\n")  # another tool's prediction for another patient
    before = snapshot(other, foreign)
    result = mddose("predict", world["run"], world["data"], other, "--steps", "1", "--device", "cpu")
    assert_clean_error(result, str(other), "mddose predict did not make", "pt_1.csv", "mddose baseline made")
    result = mddose("predict", world["run"], world["data"], foreign, "--steps", "1", "--device", "cpu")
    assert_clean_error(result, str(foreign), "mddose predict did not make", "pt_9.csv")
    assert snapshot(other, foreign) == before


def test_17_a_killed_qa_leaves_nothing_the_next_qa_keeps(world: dict[str, Path], tmp_path: Path, errors: Path,
                                                         mddose) -> None:
    out = tmp_path / "qa_kill"
    (tmp_path / ".qa_kill.notes.tmp").write_text("mine")  # the user's hidden file of a similar name
    killed = _start(["qa", world["run"], world["data"] / "pt_1", "--out", out, "--errors", errors, "--steps", "400",
                     "--sampler", "ddim", "--no-gamma", "--device", "cpu"], f".qa_kill.*.tmp/{OWNER}", tmp_path)
    _kill(killed)
    left = [p for p in tmp_path.glob(".qa_kill.*.tmp") if p.is_dir()]
    assert left and (left[0] / OWNER).is_file()  # what the kill left
    before = snapshot(tmp_path / ".qa_kill.notes.tmp")
    result = mddose("qa", world["run"], world["data"] / "pt_1", "--out", out, "--errors", errors, "--steps", "1",
                    "--samples", "2", "--no-gamma", "--device", "cpu")
    assert result.code == 0, result.err
    assert [p.name for p in tmp_path.glob(".qa_kill.*")] == [".qa_kill.notes.tmp"]
    assert snapshot(tmp_path / ".qa_kill.notes.tmp") == before
    assert (out / "qa.json").is_file()


@pytest.mark.parametrize("command", ["prepare", "baseline", "predict"])
def test_18_a_failed_command_leaves_no_folder_of_markers(command: str, world: dict[str, Path], data_copy: Path,
                                                         tmp_path: Path, mddose) -> None:
    (data_copy / "pt_1" / "possible_dose_mask.csv").unlink()
    before = snapshot(data_copy)
    out = tmp_path / "out" / "deeper"
    args = {"prepare": ["prepare", data_copy, out], "baseline": ["baseline", data_copy, out],
            "predict": ["predict", world["run"], data_copy, out, "--steps", "1", "--device", "cpu"]}[command]
    assert_clean_error(mddose(*args), "pt_1", "missing possible_dose_mask.csv")
    assert not (tmp_path / "out").exists()
    assert snapshot(data_copy) == before
