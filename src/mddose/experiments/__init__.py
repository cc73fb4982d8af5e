"""The paper's tables and the demo: every method trained and scored with the same data, seed and budget
(:mod:`.tables`), Table II's timing (:mod:`.timing`) and the five-minute demo (:mod:`.demo`)."""
