"""Knowledge-based plan QA (``mddose qa``): a clinical plan's dose against the dose the model predicts is
achievable for the same anatomy.

* :mod:`~mddose.qa.metrics` — the clinical DVH metrics QA compares, per ROI kind, and which way is worse;
* :mod:`~mddose.qa.tolerance` — the model's known error per ROI and metric (``qa_errors.json``) and the tolerance
  it gives; :mod:`~mddose.qa.calibrate` measures that table on validation patients (``mddose qa-calibrate``);
* :mod:`~mddose.qa.check` — the comparison itself: per-ROI rows, differences, tolerances and flags (pure numpy);
* :mod:`~mddose.qa.inputs` — the patient (OpenKBP folder or DICOM) and the plan dose (CSV or RTDOSE);
* :mod:`~mddose.qa.run` — the command: predict, check, gamma, write ``qa.json``, ``qa.csv`` and the page;
* :mod:`~mddose.qa.page` — the HTML page and its figures.
"""
