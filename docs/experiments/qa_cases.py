"""The three QA cases of the `mddose qa` issue on an OpenKBP validation patient, with the shipped model.

    PYTHONPATH=. python3 docs/experiments/qa_cases.py ../shared/openkbp/validation-pats/pt_201 /tmp/qa-cases

Writes PLAN.csv variants (the clinical plan; its left parotid 30 % hotter outside the targets; its PTV70 coverage
cut by 8 %) and runs `mddose qa openkbp` on each; prints the flagged ROIs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mddose.data.openkbp import read_patient, write_dose_csv
from tests.qa.helpers import cut_coverage, raised_oar


def main(patient_dir: Path, out: Path) -> None:
    patient = read_patient(patient_dir)
    plans = {"clinical": patient.dose, "parotid_hot": raised_oar(patient, patient.dose, "LeftParotid"),
             "ptv70_cut": cut_coverage(patient, patient.dose, "PTV70")}
    for name, dose in plans.items():
        plan = out / f"{name}.csv"
        plan.parent.mkdir(parents=True, exist_ok=True)
        write_dose_csv(plan, dose, patient.possible_dose_mask)
        subprocess.run(["mddose", "qa", "openkbp", str(patient_dir), str(plan), "--out",
                        str(out / name)], check=True)
        summary = json.loads((out / name / "qa.json").read_text())
        print(f"{name}: flagged {summary['flagged']}, gamma {summary['gamma']['pass_rate']}, "
              f"{summary['seconds']} s", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
