"""The package installs only `mgm_mlx`: convert/ and tui/ land inside it."""

import subprocess
import sys


def test_only_mgm_mlx_is_a_top_level_name(tmp_path):
    code = (
        "import importlib.util as u, mgm_mlx.convert, mgm_mlx.tui;"
        "print([n for n in ('convert', 'tui', 'tests', 'examples') if u.find_spec(n)])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_openblas_preload_is_optional_and_can_be_turned_off(tmp_path):
    import os

    code = "import mgm_mlx.linux_cpu as c, mgm_mlx, sys; print(c.OPENBLAS, sys.platform)"
    env = {**os.environ, "MGM_MLX_NO_OPENBLAS": "1"}
    off = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert off.returncode == 0 and off.stdout.split()[0] == "None"
    # imported after mlx it must not try (too late to matter)
    late = subprocess.run([sys.executable, "-c", "import mlx.core, mgm_mlx.linux_cpu as c; print(c.preload_openblas())"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert late.returncode == 0 and late.stdout.strip() == "None"
