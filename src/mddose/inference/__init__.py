"""Prediction: whole patients from a trained model (:mod:`.predict`), the deterministic baselines' forward pass
and 3D sliding window (:mod:`.regression`), the trivial baseline (:mod:`.trivial`) and the models shipped with
the package (:mod:`.pretrained`)."""
