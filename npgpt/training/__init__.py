"""The machinery around the training loop: settings, data, the loop itself, the NumPy backend
and the run directory (atomic checkpoint snapshots, metrics, the loss plot)."""
