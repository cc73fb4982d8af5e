"""Issue 32, findings 7–16 and 19: nonsense is refused and every failure is one line naming its file. Numeric
options are bounded, what predict writes is bounded, links and folders in the wrong place are named, a huge grid
or a full disk is one line, and the error after a progress bar starts a line of its own."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mddose.data.openkbp import read_dose_csv, write_sparse_csv
from mddose.data.phantom import make_phantom
from mddose.io.dicom_write import export_patient_dicom
from tests.reliability.conftest import assert_clean_error, snapshot


@pytest.mark.parametrize("option", [["--max-steps", "-5"], ["--minutes", "-1"], ["--minutes", "nan"]])
def test_7_train_refuses_a_budget_that_is_not_positive(option: list[str], world: dict[str, Path], tmp_path: Path,
                                                       mddose) -> None:
    before = snapshot(world["cache"])
    result = mddose("train", world["cache"], tmp_path / "run", *option)
    assert result.code == 2 and option[0] in result.err and "Traceback" not in result.err, result.err
    assert_clean_error(mddose("train", world["cache"], tmp_path / "run", "--minutes", "0"), "--minutes",
                       "positive")
    assert not (tmp_path / "run").exists() and snapshot(world["cache"]) == before


@pytest.mark.parametrize("value, problem", [(-5.0, "negative dose"), (5000.0, "above 200 Gy")])
def test_8_evaluate_refuses_a_dose_no_plan_has(value: float, problem: str, world: dict[str, Path], tmp_path: Path,
                                               mddose) -> None:
    dose = read_dose_csv(world["data"] / "pt_1" / "dose.csv", (64, 64, 64))
    dose[np.unravel_index(int(np.argmax(dose)), dose.shape)] = value
    preds = tmp_path / "preds"
    write_sparse_csv(preds / "pt_1.csv", dose)
    before = snapshot(preds)
    result = mddose("evaluate", world["data"], preds, "--out", tmp_path / "e", "--no-gamma")
    assert_clean_error(result, "pt_1.csv", problem)
    assert not (tmp_path / "e").exists() and snapshot(preds) == before


def test_9_predict_refuses_a_dose_above_the_physical_bound(world: dict[str, Path], tmp_path: Path, mddose) -> None:
    run = Path(shutil.copytree(world["run"], tmp_path / "run"))
    for config in run.rglob("config.json"):  # as a user who edited the checkpoint's dose normalisation
        cfg = json.loads(config.read_text())
        cfg["data"]["dose_norm_gy"] = 8000.0
        config.write_text(json.dumps(cfg))
    result = mddose("predict", run, world["data"], tmp_path / "p", "--steps", "2", "--device", "cpu")
    assert_clean_error(result, "pt_1", "Gy a prediction may hold", "edited or broken")
    assert not (tmp_path / "p").exists()


def _one_mm(data_copy: Path) -> Path:
    (data_copy / "pt_1" / "voxel_dimensions.csv").write_text("1.0\n1.0\n1.0\n")
    return data_copy / "pt_1" / "voxel_dimensions.csv"


@pytest.mark.parametrize("model", ["run", "pretrained"])
def test_10_predict_refuses_a_patient_at_another_scale(model: str, world: dict[str, Path], data_copy: Path,
                                                        tmp_path: Path, mddose) -> None:
    _one_mm(data_copy)
    before = snapshot(data_copy)
    source = ["openkbp"] if model == "pretrained" else [world["run"]]
    result = mddose("predict", *source, data_copy, tmp_path / "p", "--steps", "1", "--device", "cpu")
    assert_clean_error(result, "voxel_dimensions.csv", "another scale", "in training")
    assert not (tmp_path / "p").exists() and snapshot(data_copy) == before


def test_10_qa_refuses_a_patient_at_another_scale(world: dict[str, Path], data_copy: Path, tmp_path: Path,
                                                  mddose) -> None:
    from tests.qa.helpers import stated_table

    _one_mm(data_copy)
    errors = stated_table().save(tmp_path / "errors.json")
    result = mddose("qa", world["run"], data_copy / "pt_1", "--out", tmp_path / "q", "--errors", errors,
                    "--steps", "1", "--no-gamma", "--device", "cpu")
    assert_clean_error(result, "pt_1", "another scale")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("command", ["predict", "qa", "qa-calibrate", "experiment"])
def test_11_samples_are_bounded(command: str, world: dict[str, Path], tmp_path: Path, mddose) -> None:
    data, run = world["data"], world["run"]
    args = {"predict": ["predict", run, data, tmp_path / "p"], "qa": ["qa", run, data / "pt_1", "--out", tmp_path],
            "qa-calibrate": ["qa-calibrate", run, data],
            "experiment": ["experiment", "table3", world["cache"], data, tmp_path / "x"]}[command]
    result = mddose(*args, "--samples", "100000")
    assert result.code == 2 and "'--samples'" in result.err and "64" in result.err, result.err  # the bound named
    assert list(tmp_path.iterdir()) == []


def test_12_links_that_loop_and_folders_for_files_are_named(world: dict[str, Path], data_copy: Path, tmp_path: Path,
                                                           mddose) -> None:
    def refused(*args: object, words: tuple[str, ...]) -> None:
        before = snapshot(data_copy)
        assert_clean_error(mddose(*args), *words)
        assert snapshot(data_copy) == before

    (data_copy / "pt_9").symlink_to(data_copy / "pt_9")  # a patient link that loops
    refused("prepare", data_copy, tmp_path / "c", words=("pt_9", "a link that loops"))
    (data_copy / "pt_9").unlink()
    ct = data_copy / "pt_2" / "ct.csv"
    ct.unlink()
    ct.symlink_to(ct)  # a file link that loops
    refused("prepare", data_copy, tmp_path / "c", words=("ct.csv", "a link that loops"))
    ct.unlink()
    ct.mkdir()  # a folder where the file belongs
    refused("baseline", data_copy, tmp_path / "b", words=("ct.csv", "is a folder, not a file"))
    assert not (tmp_path / "c").exists() and not (tmp_path / "b").exists()


def test_13_a_huge_grid_is_refused_before_anything_is_allocated(data_copy: Path, tmp_path: Path, mddose) -> None:
    (data_copy / "pt_1" / "grid_shape.csv").write_text("100000\n100000\n100000\n")
    before = snapshot(data_copy)
    result = mddose("prepare", data_copy, tmp_path / "c")
    assert_clean_error(result, "grid_shape.csv", "100000×100000×100000", "larger than mddose reads")
    assert not (tmp_path / "c").exists() and snapshot(data_copy) == before


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e9"])
def test_14_smoothing_is_bounded(value: str, world: dict[str, Path], tmp_path: Path, mddose) -> None:
    result = mddose("predict", world["run"], world["data"], tmp_path / "p", "--smooth-mm", value)
    assert result.code == 2 and "--smooth-mm" in result.err and "Traceback" not in result.err, result.err
    assert not (tmp_path / "p").exists()


def test_15_train_on_patients_without_dose_is_one_line(data_copy: Path, tmp_path: Path, mddose) -> None:
    for dose in data_copy.glob("pt_*/dose.csv"):
        dose.unlink()
    assert mddose("prepare", data_copy, tmp_path / "c").code == 0
    result = mddose("train", tmp_path / "c", tmp_path / "run", "--max-steps", "1")
    assert_clean_error(result, str(tmp_path / "c"), "pt_1, pt_2 have no dose")
    assert not (tmp_path / "run").exists()


@contextlib.contextmanager
def _full_disk(limit: int = 16 * 1024) -> Iterator[None]:
    """Writes beyond ``limit`` bytes fail in this process (EFBIG), as on a full disk: what every writer — numpy,
    pydicom, safetensors, matplotlib — then raises is what the commands must turn into one line."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.fixture(scope="module")
def imported(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dicom")
    from mddose.io.dicom_import import import_dicom

    dicom = export_patient_dicom(make_phantom(1, 64, "pt_2"), root / "dicom")
    return {"dicom": dicom, "patient": import_dicom(dicom, root / "pts" / "pt_2").patient_dir}


@pytest.mark.parametrize("command", ["export-dicom", "train", "predict", "prepare", "import-dicom", "evaluate"])
def test_16_a_full_disk_is_one_line_naming_the_file(command: str, world: dict[str, Path], imported: dict[str, Path],
                                                    tmp_path: Path, mddose) -> None:
    out = tmp_path / "out"
    args = {"export-dicom": ["export-dicom", imported["patient"], imported["dicom"], out / "RD.dcm"],
            "train": ["train", world["cache"], out, "--max-steps", "1", "--device", "cpu"],
            "predict": ["predict", world["run"], world["data"], out, "--steps", "1", "--device", "cpu"],
            "prepare": ["prepare", world["data"], out],
            "import-dicom": ["import-dicom", imported["dicom"], out / "pt_2"],
            "evaluate": ["evaluate", world["data"], world["data"], "--out", out, "--no-gamma", "--figures"]}[command]
    if command == "export-dicom":
        out.mkdir()
    before = snapshot(world["data"], world["cache"], imported["dicom"], imported["patient"])
    with _full_disk():
        result = mddose(*args)
    assert_clean_error(result, str(out), "cannot write (File too large)")
    assert snapshot(world["data"], world["cache"], imported["dicom"], imported["patient"]) == before


def test_16_no_space_left_is_said_with_the_file(world: dict[str, Path], tmp_path: Path, mddose,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full)
    result = mddose("baseline", world["data"], tmp_path / "b")
    assert_clean_error(result, str(tmp_path / "b"), "cannot write (No space left on device)")
    assert not (tmp_path / "b").exists()


def test_19_an_error_after_a_progress_bar_starts_its_own_line(world: dict[str, Path], tmp_path: Path,
                                                             mddose) -> None:
    cache = Path(shutil.copytree(world["cache"], tmp_path / "cache"))
    data = (cache / "pt_1.npz.xz").read_bytes()
    (cache / "pt_1.npz.xz").write_bytes(data[: len(data) // 2])  # a truncated cache file, read mid-training
    config = tmp_path / "micro.json"
    config.write_text((world["run"] / "config.json").read_text())
    result = mddose("train", cache, tmp_path / "run", "--config", config, "--max-steps", "2", "--device", "cpu")
    assert_clean_error(result, "pt_1.npz.xz", "corrupt cache file")
    assert "train:" in result.err  # the progress bar was on screen
    assert any(line.startswith("error: ") for line in result.err.split("\n")), repr(result.err[-300:])
