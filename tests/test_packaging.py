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
