"""Training (paper Sec. III-B): the loop of :mod:`.loop` — data, model, EMA, optimizer, checkpoints, validation —
for MD-Dose's diffusion loss and for the deterministic baselines' voxel-wise loss alike."""
