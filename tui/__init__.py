"""Terminal chat app (to come); installed as `mgm_mlx.tui`."""
