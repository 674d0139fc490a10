"""The DVC stages: one module per stage, run as `python -m pipeline.stages.<stage>`."""
