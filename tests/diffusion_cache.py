"""A tiny FLUX.1-schnell / SD3-medium in diffusionkit's on-disk format, as a Hugging Face cache.

Tiny diffusionkit modules are built with random weights; their tensors are written under the
real repo ids and file names, in the released key layout (BFL / SD3 / Hugging Face names), by
inverting diffusionkit's key maps. `check_roundtrip` runs diffusionkit's own maps back over the
files and compares tensor by tensor. `patches()` gives the few hard-coded shapes to swap in
(diffusionkit reads only CLIP and T5 sizes from the files). Torch-free; about a second.
"""

import json
import string
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

FLUX = "argmaxinc/mlx-FLUX.1-schnell"
SD3 = "argmaxinc/mlx-stable-diffusion-3-medium"
SHARED = "argmaxinc/stable-diffusion"
T5 = "google/t5-v1_1-xxl"
HIDDEN, HEADS, CLIP_DIM = 64, 2, 32
VAE = dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1, resnet_groups=8)
WORDS = "a cat dog red blue house tree sun sky on in the of with under small big painting photo of a"


def _configs(kind: str, t5_dim: int):
    from diffusionkit.mlx.config import MMDiTConfig, PositionalEncoding, VAEDecoderConfig, VAEEncoderConfig

    if kind == "flux":
        mmdit = MMDiTConfig(num_heads=HEADS, depth_multimodal=1, depth_unified=2, hidden_size_override=HIDDEN,
                            patchify_via_reshape=True, pos_embed_type=PositionalEncoding.PreSDPARope,
                            rope_axes_dim=(8, 12, 12), pooled_text_embed_dim=CLIP_DIM, use_qk_norm=True,
                            token_level_text_embed_dim=t5_dim, frequency_embed_dim=32)
    else:
        mmdit = MMDiTConfig(num_heads=HEADS, depth_multimodal=2, hidden_size_override=HIDDEN, max_latent_resolution=16,
                            pooled_text_embed_dim=2 * CLIP_DIM, frequency_embed_dim=32)
    decoder = VAEDecoderConfig(**VAE)
    encoder = VAEEncoderConfig(**VAE)
    return mmdit, decoder, encoder


def patches(kind: str) -> dict:
    """(module, attribute) -> value for monkeypatch.setattr: the tiny MMDiT and VAE shapes."""
    from diffusionkit.mlx import model_io

    mmdit, decoder, encoder = _configs(kind, 4096 if kind == "sd3" else 64)
    out = {(model_io, "VAEDecoderConfig"): lambda: decoder, (model_io, "VAEEncoderConfig"): lambda: encoder}
    if kind == "flux":
        out[(model_io, "FLUX_SCHNELL")] = mmdit
    else:
        out[(model_io, "_CONFIG")] = {**model_io._CONFIG, SD3: mmdit}
    return out


def _np(tree) -> dict:
    from mlx.utils import tree_flatten

    return {k: np.array(v) for k, v in tree_flatten(tree)}


def _c(a):
    return np.ascontiguousarray(a)  # safetensors.numpy writes non-contiguous views scrambled


def _conv(w):  # MLX OHWI -> PyTorch OIHW
    return _c(w.transpose(0, 3, 1, 2))


def _1x1(w):  # Linear (O, I) -> 1x1 conv (O, I, 1, 1)
    return _c(w[:, :, None, None])


def _vae_to_disk(native: dict, prefix: str) -> dict:
    out = {}
    for k, v in native.items():
        d = k
        for a, b in (("up_blocks.", "up."), ("down_blocks.", "down."), (".resnets.", ".block."),
                     ("mid_blocks.0.", "mid.block_1."), ("mid_blocks.2.", "mid.block_2."),
                     ("mid_blocks.1.", "mid.attn_1."), ("group_norm", "norm"), ("query_proj", "q"),
                     ("key_proj", "k"), ("value_proj", "v"), ("out_proj", "proj_out"),
                     ("conv_shortcut", "nin_shortcut"), ("conv_norm_out", "norm_out")):
            d = d.replace(a, b)
        d = d.replace(".upsample.", ".upsample.conv.").replace(".downsample.", ".downsample.conv.")
        if v.ndim == 4:
            v = _conv(v)
        elif v.ndim == 2:
            v = _1x1(v)
        out[prefix + d] = _c(v)
    return out


def _flux_to_disk(native: dict) -> dict:
    h = HIDDEN
    out, n = {}, dict(native)
    zeros = np.zeros(h, np.float32)  # BFL's fused qkv has a k bias that MLX's k_proj lacks

    def qkv(src, dst):
        out[dst + ".qkv.weight"] = _c(np.concatenate([n.pop(f"{src}.{x}_proj.weight") for x in "qkv"]))
        out[dst + ".qkv.bias"] = _c(np.concatenate([n.pop(f"{src}.q_proj.bias"), zeros, n.pop(f"{src}.v_proj.bias")]))
        for p in ("weight", "bias"):
            out[f"{dst}.proj.{p}"] = n.pop(f"{src}.o_proj.{p}")

    blocks = sorted({int(k.split(".")[1]) for k in n if k.startswith("multimodal_transformer_blocks.")})
    for i in blocks:
        for side, short in (("image", "img"), ("text", "txt")):
            src = f"multimodal_transformer_blocks.{i}.{side}_transformer_block"
            dst = f"double_blocks.{i}.{short}"
            qkv(src + ".attn", dst + "_attn")
            for p in ("weight", "bias"):
                out[f"{dst}_mlp.0.{p}"] = n.pop(f"{src}.mlp.fc1.{p}")
                out[f"{dst}_mlp.2.{p}"] = n.pop(f"{src}.mlp.fc2.{p}")
                out[f"{dst}_mod.lin.{p}"] = n.pop(f"{src}.adaLN_modulation.layers.1.{p}")
            out[f"{dst}_attn.norm.query_norm.scale"] = n.pop(f"{src}.qk_norm.q_norm.weight")
            out[f"{dst}_attn.norm.key_norm.scale"] = n.pop(f"{src}.qk_norm.k_norm.weight")
    singles = sorted({int(k.split(".")[1]) for k in n if k.startswith("unified_transformer_blocks.")})
    for i in singles:
        src, dst = f"unified_transformer_blocks.{i}.transformer_block", f"single_blocks.{i}"
        parts = [n.pop(f"{src}.attn.{x}_proj.weight") for x in "qkv"] + [n.pop(f"{src}.mlp.fc1.weight")]
        out[dst + ".linear1.weight"] = _c(np.concatenate(parts))
        out[dst + ".linear1.bias"] = _c(np.concatenate(
            [n.pop(f"{src}.attn.q_proj.bias"), zeros, n.pop(f"{src}.attn.v_proj.bias"), n.pop(f"{src}.mlp.fc1.bias")]))
        out[dst + ".linear2.weight"] = _c(np.concatenate(
            [n.pop(f"{src}.attn.o_proj.weight"), n.pop(f"{src}.mlp.fc2.weight")], axis=1))
        out[dst + ".linear2.bias"] = n.pop(f"{src}.attn.o_proj.bias")
        native[f"{src}.mlp.fc2.bias"] = n.pop(f"{src}.mlp.fc2.bias") * 0 + out[dst + ".linear2.bias"]  # one bias on disk
        for p in ("weight", "bias"):
            out[f"{dst}.modulation.lin.{p}"] = n.pop(f"{src}.adaLN_modulation.layers.1.{p}")
        out[dst + ".norm.query_norm.scale"] = n.pop(f"{src}.qk_norm.q_norm.weight")
        out[dst + ".norm.key_norm.scale"] = n.pop(f"{src}.qk_norm.k_norm.weight")
    out["img_in.weight"] = _c(n.pop("x_embedder.proj.weight")[:, 0, 0, :])
    out["img_in.bias"] = n.pop("x_embedder.proj.bias")
    for a, b in (("context_embedder.", "txt_in."), ("t_embedder.mlp.layers.0.", "time_in.in_layer."),
                 ("t_embedder.mlp.layers.2.", "time_in.out_layer."), ("y_embedder.mlp.layers.0.", "vector_in.in_layer."),
                 ("y_embedder.mlp.layers.2.", "vector_in.out_layer."), ("final_layer.adaLN_modulation.layers.1.",
                                                                       "final_layer.adaLN_modulation.1.")):
        for k in [k for k in n if k.startswith(a)]:
            out[b + k[len(a):]] = n.pop(k)
    for k in [k for k in n if k.startswith("final_layer.linear.")]:
        out[k] = n.pop(k)
    assert not n, f"unmapped MMDiT tensors: {sorted(n)}"
    return out


def _sd3_to_disk(native: dict) -> dict:
    out, n = {}, dict(native)
    pre = "model.diffusion_model."
    blocks = sorted({int(k.split(".")[1]) for k in n if k.startswith("multimodal_transformer_blocks.")})
    for i in blocks:
        for side, short in (("image", "x_block"), ("text", "context_block")):
            src, dst = f"multimodal_transformer_blocks.{i}.{side}_transformer_block", f"{pre}joint_blocks.{i}.{short}"
            if f"{src}.attn.q_proj.weight" not in n:
                continue
            out[dst + ".attn.qkv.weight"] = _c(np.concatenate([n.pop(f"{src}.attn.{x}_proj.weight") for x in "qkv"]))
            q_bias = n.pop(f"{src}.attn.q_proj.bias")
            out[dst + ".attn.qkv.bias"] = _c(np.concatenate([q_bias, np.zeros_like(q_bias), n.pop(f"{src}.attn.v_proj.bias")]))
            for k in [k for k in n if k.startswith(src + ".")]:
                rest = k[len(src) + 1:].replace("attn.o_proj", "attn.proj").replace("adaLN_modulation.layers", "adaLN_modulation")
                out[f"{dst}.{rest}"] = n.pop(k)
    out[pre + "x_embedder.proj.weight"] = _conv(n.pop("x_embedder.proj.weight"))
    out[pre + "pos_embed"] = _c(n.pop("x_pos_embedder.pos_embed.weight")[None])
    for k in list(n):
        d = k.replace("mlp.layers", "mlp").replace("adaLN_modulation.layers", "adaLN_modulation")
        out[pre + d] = n.pop(k)
    return out


def _clip_to_disk(native: dict) -> dict:
    out = {"text_model.embeddings.position_ids": np.arange(77, dtype=np.int64)[None]}  # as older exports have
    for k, v in native.items():
        if k.startswith(("token_embedding", "position_embedding")):
            d = "text_model.embeddings." + k
        elif k.startswith("layers."):
            d = "text_model.encoder." + k.replace("attention.", "self_attn.").replace("query_proj", "q_proj").replace(
                "key_proj", "k_proj").replace("value_proj", "v_proj").replace("linear1", "mlp.fc1").replace("linear2", "mlp.fc2")
        elif k.startswith("final_layer_norm"):
            d = "text_model." + k
        else:
            d = k
        out[d] = _c(v.astype(np.float16))
    return out


def _t5_to_disk(native: dict) -> dict:
    out = {}
    for k, v in native.items():
        if k == "wte.weight":
            out["encoder.embed_tokens.weight"] = out["shared.weight"] = v
            continue
        if k == "encoder.relative_attention_bias.embeddings.weight":
            out["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = v
            continue
        if k == "encoder.ln.weight":
            out["encoder.final_layer_norm.weight"] = v
            continue
        d = k.replace("encoder.layers.", "encoder.block.")
        d = d.replace(".attention.query_proj", ".layer.0.SelfAttention.q").replace(".attention.key_proj", ".layer.0.SelfAttention.k")
        d = d.replace(".attention.value_proj", ".layer.0.SelfAttention.v").replace(".attention.out_proj", ".layer.0.SelfAttention.o")
        d = d.replace(".ln1.", ".layer.0.layer_norm.").replace(".ln2.", ".layer.1.layer_norm.").replace(".dense.", ".layer.1.DenseReluDense.")
        out[d] = v
    return {k: _c(v) for k, v in out.items()}


def _clip_vocab():
    chars = [c for c in string.printable if not c.isspace()]
    vocab = {}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    merges = [("c", "a"), ("ca", "t</w>"), ("t", "h"), ("th", "e</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)  # pooling takes argmax: the EOS id must be the largest
    return vocab, "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n"


def _train_spiece(path: Path):
    import io

    import sentencepiece as spm

    lines = [" ".join(WORDS.split()[i:] + WORDS.split()[:i]) for i in range(12)] + [string.printable[:94]] * 4
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=140, model_type="unigram",
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
                                   hard_vocab_limit=False, minloglevel=2)
    path.write_bytes(model.getvalue())


def _write_repo(cache: Path, repo: str, files: dict):
    """files: relative name -> bytes | dict of arrays (safetensors) | dict (json)."""
    root = cache / ("models--" + repo.replace("/", "--"))
    sha = "0" * 40
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(sha)
    snap = root / "snapshots" / sha
    for name, content in files.items():
        path = snap / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        elif content and isinstance(next(iter(content.values())), np.ndarray):
            save_file(content, str(path))
        else:
            path.write_text(json.dumps(content))
    return snap


def make_cache(cache: Path, kind: str = "flux", seed: int = 0) -> dict:
    """Write the tiny `kind` ("flux" or "sd3") into the HF cache folder `cache`; return the
    native tensors each loader should produce, for check_roundtrip."""
    import mlx.core as mx
    from diffusionkit.mlx.clip import CLIPTextModel
    from diffusionkit.mlx.config import CLIPTextModelConfig
    from diffusionkit.mlx.mmdit import MMDiT
    from diffusionkit.mlx.t5 import SD3T5Encoder
    from diffusionkit.mlx.vae import VAEDecoder, VAEEncoder
    from transformers import T5Config

    mx.random.seed(seed)
    t5_dim = 4096 if kind == "sd3" else 64  # SD3 pads CLIP features to 4096 and joins T5 along the sequence
    mmdit_cfg, dec_cfg, enc_cfg = _configs(kind, t5_dim)
    t5_json = dict(vocab_size=160, d_model=t5_dim, d_kv=8, d_ff=16, num_layers=1, num_heads=2, feed_forward_proj="gated-gelu",
                   decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, architectures=["T5EncoderModel"], model_type="t5")
    vocab, merges = _clip_vocab()

    def clip_json(arch):
        return dict(architectures=[arch], hidden_size=CLIP_DIM, intermediate_size=4 * CLIP_DIM, num_attention_heads=2,
                    num_hidden_layers=2, max_position_embeddings=77, vocab_size=len(vocab), projection_dim=CLIP_DIM,
                    hidden_act="quick_gelu", model_type="clip_text_model")

    def clip_module():
        return CLIPTextModel(CLIPTextModelConfig(num_layers=2, model_dims=CLIP_DIM, num_heads=2, max_length=77,
                                                 vocab_size=len(vocab), projection_dim=CLIP_DIM))

    native = {"mmdit": _np(MMDiT(mmdit_cfg).parameters())}
    decoder = VAEDecoder(in_channels=16, out_channels=3, **VAE)
    encoder = VAEEncoder(in_channels=3, out_channels=32, **VAE)
    native["decoder"], native["encoder"] = _np(decoder.parameters()), _np(encoder.parameters())
    native["clip_l"], native["clip_g"] = _np(clip_module().parameters()), _np(clip_module().parameters())
    native["t5"] = _np(SD3T5Encoder(T5Config(**t5_json)).parameters())
    del dec_cfg, enc_cfg

    if kind == "flux":
        mmdit_file = {**_flux_to_disk(native["mmdit"])}
        vae = {**_vae_to_disk(native["decoder"], "decoder."), **_vae_to_disk(native["encoder"], "encoder.")}
        _write_repo(cache, FLUX, {"flux-schnell.safetensors": mmdit_file, "ae.safetensors": vae, "config.json": {}})
    else:
        vae = {**_vae_to_disk(native["decoder"], "first_stage_model.decoder."),
               **_vae_to_disk(native["encoder"], "first_stage_model.encoder.")}
        _write_repo(cache, SD3, {"sd3_medium.safetensors": {**_sd3_to_disk(native["mmdit"]), **vae}, "config.json": {}})
    shared = {"clip_l/config.json": clip_json("CLIPTextModelWithProjection"), "clip_l/model.fp16.safetensors": _clip_to_disk(native["clip_l"]),
              "tokenizer_l/vocab.json": vocab, "tokenizer_l/merges.txt": merges, "t5/t5xxl.safetensors": _t5_to_disk(native["t5"])}
    if kind == "sd3":
        shared.update({"clip_g/config.json": clip_json("CLIPTextModelWithProjection"),
                       "clip_g/model.fp16.safetensors": _clip_to_disk(native["clip_g"]),
                       "tokenizer_g/vocab.json": vocab, "tokenizer_g/merges.txt": merges})
    _write_repo(cache, SHARED, shared)
    snap = _write_repo(cache, T5, {"config.json": t5_json, "tokenizer_config.json": {"tokenizer_class": "T5Tokenizer", "extra_ids": 0},
                                   "special_tokens_map.json": {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}})
    _train_spiece(snap / "spiece.model")
    for name in ("clip_l", "clip_g"):  # CLIP weights go through fp16 on disk
        native[name] = {k: v.astype(np.float16).astype(np.float32) for k, v in native[name].items()}
    return native
