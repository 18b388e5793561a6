"""The machinery around the training loop: the loop itself (loop.py), its settings, the backend
protocol with npgpt's NumPy backend, the data (corpus, windows) and the run directory (atomic
checkpoint snapshots, metrics, the loss plot)."""
