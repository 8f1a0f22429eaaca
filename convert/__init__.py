"""Checkpoint conversion (`python -m mgm_mlx.convert`); installed as `mgm_mlx.convert`."""
