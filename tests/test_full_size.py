"""Real MGM dimensions with random weights. MLX infers shapes while it builds the graph,
so these check full-size shapes without running the (minutes-long on CPU) computation;
benchmarks/vision.py runs it for real."""

from mgm_mlx.clip import VisionConfig
from mgm_mlx.convnext import ConvNeXtConfig
from mgm_mlx.ops import lowres_views
from mgm_mlx.vision import MGMVision, VisionArgs

import mlx.core as mx
import pytest


@pytest.mark.parametrize("hd", [False, True], ids=["768", "HD-1536"])
@pytest.mark.parametrize("hidden", [2048, 4096])
@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_real_mgm_shapes(hd, hidden, dtype):
    args = VisionArgs(image_size_aux=1536, image_grid=2, image_global=True) if hd else VisionArgs()
    model = MGMVision(args, VisionConfig(), ConvNeXtConfig(), hidden)
    model.set_dtype(dtype)
    size = args.image_size_aux
    pixels = mx.zeros((1, size, size, 3))
    views = lowres_views(pixels, 336, args.image_grid, args.image_global)
    assert views.shape == ((5 if hd else 1), 336, 336, 3)
    assert model.vision_tower(views.astype(dtype)).shape == (views.shape[0], 576, 1024)
    assert model.vision_tower_aux(pixels.astype(dtype)).shape == (1, size // 4, size // 4, 2880)
    tokens = model(pixels)
    assert tokens.shape == (1, 2880 if hd else 576, hidden) and tokens.dtype == dtype
    assert model.num_tokens == tokens.shape[1]
    # 23 of CLIP-L's 24 layers run (hidden_states[-2])
    assert model.vision_tower.vision_model.num_layers_run == 23
