"""Data layer: the Patient type, OpenKBP I/O, synthetic phantoms, the compact cache and the slice dataset."""
