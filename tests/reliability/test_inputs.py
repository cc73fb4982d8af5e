"""Bad patient files: each is one ``error: <file>: <problem>`` line from ``prepare`` (which reads every file),
exit status 1, no traceback, and a cache that is refused until a prepare finishes it. Nothing is clamped,
clipped or dropped in silence."""

from __future__ import annotations

import lzma
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from mddose.atomic import INCOMPLETE
from tests.reliability.conftest import assert_clean_error


def _rewrite(path: Path, edit: Callable[[list[str]], list[str]]) -> None:
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")


def _set_row(stem: str, row: int, text: str) -> Callable[[Path], str]:
    def mutate(pt: Path) -> str:
        _rewrite(pt / f"{stem}.csv", lambda lines: [*lines[:row], text, *lines[row + 1:]])
        return f"{stem}.csv"
    return mutate


def _dose_value(value: str) -> Callable[[Path], str]:
    def mutate(pt: Path) -> str:
        _rewrite(pt / "dose.csv", lambda lines: [lines[0], f"{lines[1].split(',')[0]},{value}", *lines[2:]])
        return "dose.csv"
    return mutate


def _duplicate(pt: Path) -> str:
    _rewrite(pt / "dose.csv", lambda lines: [lines[0], lines[1], f"{lines[1].split(',')[0]},12.5", *lines[2:]])
    return "dose.csv"


def _ct_hu(pt: Path) -> str:  # -6000 HU is stored as -5000
    _rewrite(pt / "ct.csv", lambda lines: [lines[0], f"{lines[1].split(',')[0]},-5000", *lines[2:]])
    return "ct.csv"


def _remove(name: str) -> Callable[[Path], str]:
    def mutate(pt: Path) -> str:
        (pt / name).unlink()
        return pt.name
    return mutate


def _empty_mask(pt: Path) -> str:
    (pt / "possible_dose_mask.csv").write_text(",data\n")
    return "possible_dose_mask.csv"


def _both_suffixes(pt: Path) -> str:
    (pt / "PTV70.csv.xz").write_bytes(lzma.compress((pt / "PTV70.csv").read_bytes()))
    return "PTV70.csv.xz"


def _no_grid_shape(pt: Path) -> str:
    (pt / "grid_shape.csv").unlink()
    return "possible_dose_mask.csv"


def _bad_spacing(pt: Path) -> str:
    (pt / "voxel_dimensions.csv").write_text("3.9\n-1\n2.5\n")
    return "voxel_dimensions.csv"


def _corrupt_xz(pt: Path) -> str:
    (pt / "dose.csv").unlink()
    (pt / "dose.csv.xz").write_bytes(b"\xfd7zXZ\x00 this is not lzma")
    return "dose.csv.xz"


FAULTS: dict[str, tuple[Callable[[Path], str], str]] = {
    "bad header": (_set_row("dose", 0, "index,value"), "not an OpenKBP sparse CSV"),
    "index not an integer": (_set_row("dose", 1, "12x,1.0"), "is not an integer"),
    "index outside the grid": (_set_row("dose", 1, "99999999,1.0"), "outside the 64×64×64 grid"),
    "value not a number": (_set_row("dose", 1, "5,abc"), "is not a number"),
    "value not finite": (_set_row("dose", 1, "5,nan"), "is not finite"),
    "duplicated index": (_duplicate, "listed twice"),
    "negative dose": (_dose_value("-3.0"), "negative dose"),
    "dose of 1e9 Gy": (_dose_value("1e9"), "not a dose in Gy"),
    "CT of -6000 HU": (_ct_hu, "below -3100 HU"),
    "no ct.csv": (_remove("ct.csv"), "missing ct.csv"),
    "no possible_dose_mask.csv": (_remove("possible_dose_mask.csv"), "missing possible_dose_mask.csv"),
    "no voxel_dimensions.csv": (_remove("voxel_dimensions.csv"), "missing voxel_dimensions.csv"),
    "empty possible-dose mask": (_empty_mask, "possible-dose mask is empty"),
    "PTV70.csv and PTV70.csv.xz": (_both_suffixes, "keep one"),
    "64³ grid without grid_shape.csv": (_no_grid_shape, "without its grid_shape.csv"),
    "negative voxel size": (_bad_spacing, "3 positive numbers"),
    "corrupt .xz": (_corrupt_xz, "cannot read file"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_bad_patient_file(fault: str, data_copy: Path, tmp_path: Path, mddose) -> None:
    mutate, problem = FAULTS[fault]
    named = mutate(data_copy / "pt_2")
    result = mddose("prepare", data_copy, tmp_path / "cache")
    assert_clean_error(result, named, problem)
    # what prepare finished (pt_1) stays, marked unfinished: training refuses it until prepare completes it
    assert (tmp_path / "cache" / INCOMPLETE).is_file()
    assert_clean_error(mddose("train", tmp_path / "cache", tmp_path / "run", "--max-steps", "1"), "unfinished",
                       "mddose prepare")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_patient_without_ct_is_named_not_dropped(data_copy: Path, tmp_path: Path, mddose) -> None:
    (data_copy / "pt_1" / "ct.csv").unlink()
    assert_clean_error(mddose("prepare", data_copy, tmp_path / "c"), "pt_1", "missing ct.csv")
    assert mddose("baseline", data_copy, tmp_path / "b").code == 0  # the trivial baseline needs no CT
    assert sorted(p.name for p in (tmp_path / "b").glob("pt_*.csv")) == ["pt_1.csv", "pt_2.csv"]
    result = mddose("evaluate", data_copy, tmp_path / "b", "--out", tmp_path / "e", "--no-gamma")
    assert result.code == 0 and "2/2 patients scored" in result.out, result.err


def test_data_dir_faults(world: dict[str, Path], tmp_path: Path, mddose) -> None:
    (tmp_path / "file.txt").write_text("x")
    assert_clean_error(mddose("baseline", tmp_path / "file.txt", tmp_path / "b"), "file.txt", "is a file")
    assert_clean_error(mddose("baseline", tmp_path / "missing", tmp_path / "b"), "missing", "does not exist")
    (tmp_path / "empty").mkdir()
    assert_clean_error(mddose("baseline", tmp_path / "empty", tmp_path / "b"), "no patient folders")
    assert not (tmp_path / "b").exists()


def test_predict_never_reads_the_dose(world: dict[str, Path], data_copy: Path, tmp_path: Path, mddose) -> None:
    (data_copy / "pt_1" / "dose.csv").write_text("not a csv at all\n")  # a bad reference dose: not predict's business
    result = mddose("predict", world["run"], data_copy, tmp_path / "p", "--steps", "1", "--device", "cpu")
    assert result.code == 0, result.err
    assert (tmp_path / "p" / "pt_1.csv").is_file() and not (tmp_path / "p" / INCOMPLETE).exists()
    shutil.rmtree(tmp_path / "p")
