"""Tiny random MGM checkpoints in the released on-disk layout (no torch needed).

config.json, bf16 safetensors in two shards with model.safetensors.index.json, tokenizer
files, the LLM under its Hugging Face key names (tests/goldens/llm-*, made once by
make_goldens.py with write_llm) and the image path from tests/goldens/tiny-mgm. Towers can
also go into separate folders laid out like openai/clip-vit-large-patch14-336 (HF) and
laion/CLIP-convnext_large_d_320 (OpenCLIP).
"""

import json
from pathlib import Path

from mgm_mlx import language
from mgm_mlx.loading import load_weights

import mlx.core as mx
from mlx.utils import tree_flatten

from common import GOLDENS, HD_FIELDS, TINY

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]
LLMS = {
    "gemma": dict(
        architectures=["MGMGemmaForCausalLM"], model_type="mgm_gemma", hidden_size=64,
        intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        head_dim=32, rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="gelu", tie_word_embeddings=True,
    ),
    "llama": dict(
        architectures=["MGMLlamaForCausalLM"], model_type="mgm", hidden_size=64,
        intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=False,
    ),
    "mixtral": dict(
        architectures=["MGMMixtralForCausalLM"], model_type="mgm_mixtral", hidden_size=64,
        intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        num_local_experts=4, num_experts_per_tok=2, rms_norm_eps=1e-5, rope_theta=1e6,
        tie_word_embeddings=False,
    ),
}
LEGACY = {"MGMGemmaForCausalLM": ("MiniGeminiGemmaForCausalLM", "mini_gemini_gemma"),
          "MGMLlamaForCausalLM": ("MiniGeminiLlamaForCausalLM", "mini_gemini"),
          "MGMMixtralForCausalLM": ("MiniGeminiMixtralForCausalLM", "mini_gemini_mixtral")}
MOE = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}


def make_tokenizer(folder: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["What is in the picture? A red house under a yellow sun, with a green tree.",
              "The assistant gives helpful, detailed, and polite answers to the user's questions."] * 20
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)])
    tok.save(str(folder / "tokenizer.json"))
    special = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 2048, **special}))
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    return tok.get_vocab_size()


def llm_weights(config: dict, seed: int, scale: float) -> dict:
    """Random LLM tensors under Hugging Face names (mlx-lm uses the same, but for MoE)."""
    mx.random.seed(seed)
    model = language.build(config)
    weights = {}
    for key, value in tree_flatten(model.parameters()):
        # larger than mlx's init so greedy choices are clear; norms away from their init too
        value = (scale if value.ndim > 1 else 1) * value + 0.02 * mx.random.normal(value.shape)
        if ".switch_mlp." in key:
            prefix, name, leaf = key.rsplit(".", 2)
            prefix = prefix.replace(".switch_mlp", ".experts")
            for e in range(value.shape[0]):
                weights[f"{prefix}.{e}.{MOE[name]}.{leaf}"] = value[e]
        else:
            weights[key] = value
    if language.family(config) == "gemma":
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]  # as in MGM-2B
    return weights


def save_shards(folder: Path, weights: dict):
    keys = sorted(weights)
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        mx.save_safetensors(str(folder / name), {k: weights[k].astype(mx.bfloat16) for k in part}, metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    total = sum(weights[k].size * 2 for k in keys)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def write_llm(folder: Path, llm: str, seed: int = 0, scale: float = 3.0):
    """The stored LLM part of a tiny checkpoint: config, tokenizer, HF-named bf16 tensors."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = make_tokenizer(folder)
    config = {**json.loads((TINY / "config.json").read_text()), **LLMS[llm], "vocab_size": vocab}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    weights = {k: v.astype(mx.bfloat16) for k, v in llm_weights(config, seed, scale).items()}
    mx.save_safetensors(str(folder / "llm.safetensors"), weights, metadata={"format": "pt"})


def make_checkpoint(folder: Path, llm: str = "gemma", legacy: bool = False, towers_inside: bool = True, hd: bool = False):
    """Write a checkpoint folder; returns (folder, tower folders or None)."""
    source = GOLDENS / f"llm-{llm}"
    folder.mkdir(parents=True)
    for f in source.iterdir():
        if f.name != "llm.safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((source / "config.json").read_text())
    if hd:
        config.update(HD_FIELDS)
    if legacy:
        config["architectures"] = [LEGACY[config["architectures"][0]][0]]
        config["model_type"] = LEGACY[LLMS[llm]["architectures"][0]][1]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    vision = {k: v for k, v in load_weights(TINY).items() if not k.startswith(("model.embed", "model.norm", "lm_head"))}
    towers = None
    if not towers_inside:
        towers = write_tower_folders(folder.parent / f"{folder.name}-towers", vision)
        vision = {k: v for k, v in vision.items() if not k.startswith(("model.vision_tower.", "model.vision_tower_aux."))}
    save_shards(folder, {**mx.load(str(source / "llm.safetensors")), **vision})
    return folder, towers


def write_tower_folders(root: Path, vision: dict):
    clip_dir, aux_dir = root / "clip-vit-large-patch14-336", root / "CLIP-convnext_large_d_320"
    clip_dir.mkdir(parents=True)
    aux_dir.mkdir()
    p = "model.vision_tower.vision_tower."
    clip = {k[len(p):]: v for k, v in vision.items() if k.startswith(p)}
    clip["text_model.embeddings.token_embedding.weight"] = mx.zeros((8, 4))
    mx.save_safetensors(str(clip_dir / "model.safetensors"), clip, metadata={"format": "pt"})
    (clip_dir / "config.json").write_text(json.dumps(
        {"model_type": "clip", "vision_config": {"num_attention_heads": 2, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}}))
    p = "model.vision_tower_aux.vision_"
    aux = {"visual.trunk." + k[len(p):]: v for k, v in vision.items() if k.startswith(p)}
    aux["visual.head.proj.weight"] = mx.zeros((4, 4))
    aux["text.token_embedding.weight"] = mx.zeros((8, 4))
    mx.save_safetensors(str(aux_dir / "open_clip_model.safetensors"), aux, metadata={"format": "pt"})
    return clip_dir, aux_dir


def hub_cache(cache: Path, repo: str, folder: Path, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """`folder`'s files as huggingface_hub caches the repo `repo` under `cache` (HF_HUB_CACHE):
    models--OWNER--NAME/blobs/<hash>, snapshots/<commit>/<file> -> ../../blobs/<hash>,
    refs/main holding the commit. The hash is the file's sha256 for LFS files (weights) and
    its git blob id for the rest, as on the hub. Returns the snapshot folder."""
    import hashlib
    import os

    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        lfs = f.suffix == ".safetensors"
        digest = hashlib.sha256(data) if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data)
        blob = root / "blobs" / digest.hexdigest()
        blob.write_bytes(data)
        link = snapshot / f.name
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(blob, snapshot))
    return snapshot
