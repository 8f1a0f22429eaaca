"""The terminal chat app (`python -m mgm_mlx.chat`); installed as `mgm_mlx.tui`."""
