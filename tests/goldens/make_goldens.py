"""Re-make the golden files in tests/goldens from the PyTorch reference.

    pip install torch==2.14.1 torchvision==0.29.1 transformers timm open_clip_torch
    pip install -e .          # mlx writes the tiny LLM weights
    git clone https://github.com/dvlab-research/MGM /tmp/MGM
    python tests/goldens/make_goldens.py --mgm-repo /tmp/MGM

Writes tiny-mgm/ (a random bf16 image path in the released MGM layout: config.json, two
safetensors shards and their index), llm-{gemma,llama,mixtral}/ (tiny LLMs with a tokenizer),
vision.npz and chat.npz (reference outputs) and chat.json / templates.json (prompts from the
reference's own mgm/conversation.py, token ids, greedy continuations).
"""

import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import reference as ref  # noqa: E402
from checkpoints import write_llm  # noqa: E402
from common import GOLDENS, HD_FIELDS, SMALL, TINY, mode_variants, smooth  # noqa: E402

CONFIG = {
    "architectures": ["MGMGemmaForCausalLM"],
    "model_type": "mgm_gemma",
    "hidden_size": ref.TINY_HIDDEN,
    "image_aspect_ratio": "pad",
    "image_global": False,
    "image_grid": 1,
    "image_size_aux": 768,
    "mm_hidden_size": ref.TINY_CLIP["hidden_size"],
    "mm_hidden_size_aux": sum(ref.TINY_CONVNEXT["dims"]),
    "mm_projector_type": "mlp2x_gelu",
    "mm_vision_select_feature": "patch",
    "mm_vision_select_layer": -2,
    "mm_vision_tower": "model_zoo/OpenAI/clip-vit-large-patch14-336",
    "mm_vision_tower_aux": "model_zoo/OpenAI/openclip-convnext-large-d-320-laion2B-s29B-b131K-ft-soup",
    "tokenizer_model_max_length": 2048,
    "torch_dtype": "bfloat16",
}
# (name, input side, output side, channels) for bilinear resizes, inputs from common.smooth.
RESIZES = [
    ("down_768_336", 768, 336, 1),   # MGM's LR view
    ("down_96_42", 96, 42, 2),       # the same 0.4375 ratio
    ("down_384_192", 384, 192, 1),   # HD global views (x1/2)
    ("up_96_192", 96, 192, 1),       # stage 1 -> stage 0
    ("up_48_192", 48, 192, 1),       # stage 2
    ("up_24_192", 24, 192, 1),       # stage 3
    ("odd_7x10_23x31", (7, 10), (23, 31), 2),
]


def nhwc(x):
    return x.permute(0, 2, 3, 1).contiguous().numpy() if x.ndim == 4 else x.permute(1, 2, 0).numpy()


def check_openclip_structure(tiny_trunk):
    """The tiny timm trunk has the structure of OpenCLIP's convnext_large_d_320 trunk."""
    import open_clip

    big = open_clip.create_model("convnext_large_d_320").visual.trunk
    assert type(big) is type(tiny_trunk), type(big)

    def pattern(sd):
        return {re.sub(r"\.\d+\.", ".N.", k) for k in sd if k.startswith(("stem.", "stages."))}

    assert pattern(big.state_dict()) == pattern(tiny_trunk.state_dict())
    assert [s.blocks[0].conv_dw.weight.shape[0] for s in big.stages] == [192, 384, 768, 1536]
    assert [len(s.blocks) for s in big.stages] == [3, 3, 27, 3]
    for trunk in (big, tiny_trunk):
        block = trunk.stages[1].blocks[0]
        assert not block.use_conv_mlp and block.norm.eps == 1e-6 and trunk.stem[1].eps == 1e-6
        # timm's GELU calls F.gelu with the default (exact, erf) form
        assert type(block.mlp.act).__name__ == "GELU" and getattr(block.mlp.act, "approximate", "none") == "none"
    print("OpenCLIP convnext_large_d_320 trunk: same structure as the tiny timm trunk")


def write_checkpoint(clip_model, trunk, m):
    TINY.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    sd = ref.to_mgm_state_dict(clip_model, trunk, m)
    # A few LLM tensors so loaders must pick the image path out of a whole checkpoint.
    sd["model.embed_tokens.weight"] = torch.randn(50, ref.TINY_HIDDEN, generator=g)
    sd["model.norm.weight"] = torch.randn(ref.TINY_HIDDEN, generator=g)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}
    first = [k for k in sd if k.startswith(("model.embed", "model.norm", "lm_head", "model.vision_tower."))]
    shards = {"model-00001-of-00002.safetensors": first,
              "model-00002-of-00002.safetensors": [k for k in sd if k not in first]}
    weight_map = {}
    for name, keys in shards.items():
        save_file({k: sd[k] for k in keys}, str(TINY / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in keys})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (TINY / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (TINY / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")


@torch.no_grad()
def goldens(clip_model, trunk, m):
    out = {}
    # preprocessing: many modes at a small size, the real sizes strided
    for name, img in mode_variants().items():
        out[f"pre/{name}"] = nhwc(ref.preprocess(img, SMALL))
    rgb = mode_variants()["rgb"]
    hr768 = ref.preprocess(rgb, 768)[None]
    hr1536 = ref.preprocess(rgb, 1536)[None]
    out["pre/rgb768_s5"] = nhwc(hr768)[0, ::5, ::5]
    out["lr/nonhd_s3"] = nhwc(ref.lowres(hr768))[:, ::3, ::3]
    out["lr/hd_s4"] = nhwc(ref.lowres(hr1536, 2, True))[:, ::4, ::4]

    for i, (name, a, b, c) in enumerate(RESIZES):
        a, b = (a, a) if isinstance(a, int) else a, (b, b) if isinstance(b, int) else b
        x = torch.from_numpy(smooth((1, *a, c), i)).permute(0, 3, 1, 2)
        out[f"resize/{name}"] = nhwc(F.interpolate(x, size=b, mode="bilinear", align_corners=False))

    x = torch.from_numpy(smooth((1, 336, 336, 3), 1)).permute(0, 3, 1, 2)
    out["clip/feats"] = ref.clip_features(clip_model, x).numpy()

    x = torch.from_numpy(smooth((1, 128, 128, 3), 2)).permute(0, 3, 1, 2)
    stages = ref.convnext_stages(trunk, x)
    for s, o in enumerate(stages):
        out[f"convnext/stage{s}"] = nhwc(o)
    out["convnext/concat"] = nhwc(ref.convnext_concat(stages))

    for name, q_shape, a_shape in (("small", (2, 16, 128), (2, 32, 32, 80)), ("full", (1, 576, 128), (1, 192, 192, 80))):
        q = torch.from_numpy(smooth(q_shape, 3)) * 2
        a = torch.from_numpy(smooth(a_shape, 4)).permute(0, 3, 1, 2) * 2
        feats, mined = ref.unified_resampler(m, q, a)
        out[f"mining/{name}_residual"] = (feats + mined).numpy()
        out[f"mining/{name}_tokens"] = m["proj"](feats + mined).numpy()

    views = ref.lowres(hr768)
    out["pipeline/clip"] = ref.clip_features(clip_model, views).numpy()
    out["pipeline/tokens"] = ref.encode_images(m, clip_model, trunk, views, hr768).numpy()
    views = ref.lowres(hr1536, 2, True)
    out["pipeline/hd_tokens"] = ref.encode_images(m, clip_model, trunk, views, hr1536, 2, True).numpy()
    assert out["pipeline/hd_tokens"].shape[1] == 2880
    return out


CHATS = [  # name, LLM, template, HD
    ("gemma", "gemma", "gemma", False),
    ("llama", "llama", "vicuna_v1", False),
    ("mixtral", "mixtral", "mistral_instruct", False),
    ("gemma-hd", "gemma", "gemma", True),
]
QUESTION = "What is in the picture?"


def reference_conversation(mgm_repo: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("mgm_conversation", mgm_repo / "mgm" / "conversation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prompt_of(conv_module, template, turns):
    conv = conv_module.conv_templates[template].copy()
    conv.messages = []
    for user, answer in turns:
        conv.append_message(conv.roles[0], user)
        conv.append_message(conv.roles[1], answer)
    return conv.get_prompt()


def template_goldens(conv_module):
    out = {}
    for template in ("gemma", "vicuna_v1", "mistral_instruct", "chatml_direct", "llama_3"):
        out[template] = {
            "one": prompt_of(conv_module, template, [("<image>\n" + QUESTION, None)]),
            "two": prompt_of(conv_module, template, [("<image>\n" + QUESTION, "A red house."), ("And the sky?", None)]),
            "images": prompt_of(conv_module, template, [("<image>\n<image>\nCompare them.", None)]),
        }
    return out


@torch.no_grad()
def chat_goldens(conv_module, clip_model, trunk, m, work: Path):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    arrays, info = {}, {}
    image = mode_variants()["rgb"]
    for name, llm, template, hd in CHATS:
        folder = GOLDENS / f"llm-{llm}"
        config = json.loads((folder / "config.json").read_text())
        tokenizer = AutoTokenizer.from_pretrained(folder)
        prompt = prompt_of(conv_module, template, [("<image>\n" + QUESTION, None)])
        ids = ref.tokenizer_image_token(prompt, tokenizer)
        size, grid = (1536, 2) if hd else (768, 1)
        hr = ref.preprocess(image, size)[None]
        feats = ref.encode_images(m, clip_model, trunk, ref.lowres(hr, grid, hd), hr, grid, hd)[0]
        model = ref.hf_llm(work / name, llm, config, load_file(str(folder / "llm.safetensors")))
        logits0, tokens, margin = ref.greedy(model, ref.splice(model, ids, [feats]), 32)
        assert margin > 1e-3, f"{name}: greedy top-1 margin {margin} is too thin to compare"
        arrays[f"{name}/logits"] = logits0.numpy()
        info[name] = {"template": template, "hd": hd, "prompt": prompt, "ids": ids, "tokens": tokens, "margin": margin}
        print(f"{name}: {len(ids)} ids, greedy margin {margin:.3g}")
    return arrays, info


def main():
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="Re-make tests/goldens from the PyTorch reference.")
    parser.add_argument("--mgm-repo", type=Path, required=True, help="a checkout of dvlab-research/MGM")
    args = parser.parse_args()
    conv_module = reference_conversation(args.mgm_repo)
    clip_model, trunk, m = ref.build_tiny()
    check_openclip_structure(trunk)
    ref.randomize(clip_model, trunk, m)
    write_checkpoint(clip_model, trunk, m)
    clip_model, trunk, m = ref.load_tiny(TINY)
    gold = goldens(clip_model, trunk, m)
    np.savez_compressed(GOLDENS / "vision.npz", **{k: v.astype(np.float32) for k, v in gold.items()})

    for llm in ("gemma", "llama", "mixtral"):
        write_llm(GOLDENS / f"llm-{llm}", llm)
    (GOLDENS / "templates.json").write_text(json.dumps(template_goldens(conv_module), indent=2) + "\n")
    with tempfile.TemporaryDirectory() as work:
        arrays, info = chat_goldens(conv_module, clip_model, trunk, m, Path(work))
    np.savez_compressed(GOLDENS / "chat.npz", **arrays)
    (GOLDENS / "chat.json").write_text(json.dumps(info, indent=1) + "\n")
    size = sum(f.stat().st_size for f in GOLDENS.rglob("*") if f.is_file() and f.suffix != ".py")
    print(f"wrote {len(gold)} goldens and the tiny checkpoint ({size / 1e6:.1f} MB) to {GOLDENS}")
    assert set(HD_FIELDS) <= set(CONFIG)


if __name__ == "__main__":
    main()
