"""The training program that ``accelerate launch`` runs: ``python -m core.train RUN_DIR``."""
