"""PyTorch reference for MGM's image path, used to make goldens and for live checks.

Real libraries where the reference uses them (transformers CLIPVisionModel and the PIL
CLIPImageProcessor, timm ConvNeXt as built by OpenCLIP); the MGM glue
(mm_utils.process_images, serve/cli.py, openclip_encoder.backbone, mgm_arch.encode_images
and unified_resampler) is transcribed here as plain functions.
Needs: torch, transformers, timm (open_clip_torch for the structure check).
"""

import json

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

CLIP_SIZE = 336
TINY_CLIP = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=2,
    image_size=CLIP_SIZE, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)
TINY_CONVNEXT = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))
TINY_HIDDEN = 64  # the "LLM" width of the tiny checkpoint


# ---- preprocessing (mm_utils.expand2square + CLIPImageProcessor with size = image_size_aux)

def expand2square(pil_img, background_color):
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


def preprocess(pil_img, size):
    """-> [3, size, size] float32, as process_images(image_aspect_ratio='pad')."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    img = expand2square(pil_img.convert("RGB"), tuple(int(x * 255) for x in proc.image_mean))
    return torch.as_tensor(proc.preprocess(img, return_tensors="pt")["pixel_values"][0])


def lowres(images_aux, grid=1, use_global=False):
    """serve/cli.py: [1, 3, S, S] -> CLIP input [V, 3, 336, 336] (tiles row-major, then global)."""
    image = F.interpolate(images_aux, size=[CLIP_SIZE * grid] * 2, mode="bilinear", align_corners=False)
    if grid < 2:
        return image
    tiles = image.reshape(3, grid, CLIP_SIZE, grid, CLIP_SIZE).permute(1, 3, 0, 2, 4)
    tiles = tiles.reshape(-1, 3, CLIP_SIZE, CLIP_SIZE)
    if use_global:
        glob = F.interpolate(image, size=[CLIP_SIZE] * 2, mode="bilinear", align_corners=False)
        tiles = torch.cat([tiles, glob], dim=0)
    return tiles


# ---- towers

def clip_features(model, images, select_layer=-2):
    out = model(images, output_hidden_states=True)
    return out.hidden_states[select_layer][:, 1:]


def convnext_stages(trunk, images):
    """openclip_encoder.basic_forward: stem, then the output of each stage."""
    x = trunk.stem(images)
    outs = []
    for stage in trunk.stages:
        x = stage(x)
        outs.append(x)
    return outs


def convnext_concat(outs):
    """openclip_encoder.backbone: stages 1-3 upsampled (fp32) to stage 0, concatenated."""
    size = outs[0].shape[-2:]
    ups = [F.interpolate(o.float(), size=size, mode="bilinear", align_corners=False).to(o.dtype) for o in outs[1:]]
    return torch.cat([outs[0]] + ups, dim=1)


# ---- mining (mgm_arch.unified_resampler / encode_images)

def unified_resampler(m, images, images_aux):
    patch_num = int(images.shape[1] ** 0.5)
    patch_size = images_aux.shape[-1] // patch_num
    a = images_aux.permute(0, 2, 3, 1)
    a = a.reshape(len(a), patch_num, patch_size, patch_num, patch_size, a.shape[-1])
    a = a.permute(0, 1, 3, 2, 4, 5).reshape(len(a), patch_num**2, patch_size**2, a.shape[-1])
    q = m["query"](images)
    k = m["aux"](a)
    v = m["val"](a)
    att = q[:, :, None] @ (k.transpose(-1, -2) / (k.shape[-1] ** 0.5))
    att = att.nan_to_num()
    return images, (att.softmax(-1) @ v).mean(2)


def encode_images(m, clip_model, trunk, images, images_aux, grid=1, use_global=False):
    """images: [V, 3, 336, 336] from lowres(); images_aux: [1, 3, S, S]. -> [1, T, hidden]."""
    if grid > 1:
        images = images[None]
        if use_global:
            glob_imgs, grid_imgs = images[:, -1:].flatten(0, 1), images[:, :-1].flatten(0, 1)
            images = torch.cat([grid_imgs, glob_imgs], dim=0)
        else:
            images = images.flatten(0, 1)
    feats = clip_features(clip_model, images)
    if use_global:
        feat_global, feats = feats[-1:], feats[:-1]
    aux = convnext_concat(convnext_stages(trunk, images_aux)).to(feats.dtype)
    if use_global:
        aux_global = F.interpolate(aux.float(), scale_factor=1 / grid, mode="bilinear", align_corners=False)
        feat_global, mined_global = unified_resampler(m, feat_global, aux_global.to(aux.dtype))
    if grid > 1:
        aux = aux.reshape(*aux.shape[:2], grid, aux.shape[-2] // grid, grid, aux.shape[-1] // grid)
        aux = aux.permute(0, 2, 4, 1, 3, 5).flatten(1, 2).flatten(0, 1)
    feats, mined = unified_resampler(m, feats, aux)
    if grid > 1:
        feats = feats.reshape(1, grid**2, *feats.shape[1:]).flatten(1, 2)
        mined = mined.reshape(1, grid**2, *mined.shape[1:]).flatten(1, 2)
    if use_global:
        feats = torch.cat([feat_global, feats], dim=1)
        mined = torch.cat([mined_global, mined], dim=1)
    return m["proj"](feats + mined)


# ---- the tiny checkpoint

def build_tiny():
    """Fresh tiny modules (uninitialised values; see randomize)."""
    import timm.models.convnext as tc
    from transformers import CLIPVisionConfig, CLIPVisionModel

    clip_model = CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP, attn_implementation="eager"))
    trunk = tc.ConvNeXt(in_chans=3, num_classes=0, **TINY_CONVNEXT)
    c, ca, h = TINY_CLIP["hidden_size"], sum(TINY_CONVNEXT["dims"]), TINY_HIDDEN
    m = nn.ModuleDict(dict(
        query=nn.Sequential(nn.LayerNorm(c), nn.Linear(c, c)),
        aux=nn.Sequential(nn.LayerNorm(ca), nn.Linear(ca, c)),
        val=nn.Sequential(nn.LayerNorm(ca), nn.Linear(ca, c)),
        proj=nn.Sequential(nn.Linear(c, h), nn.GELU(), nn.Linear(h, h)),
    ))
    return clip_model.eval(), trunk.eval(), m.eval()


def randomize(*modules, seed=0):
    """Values of a realistic scale (so every op matters), rounded to bf16 like a release."""
    g = torch.Generator().manual_seed(seed)
    for module in modules:
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "gamma":  # layer scale
                v = 0.5 * r
            elif p.ndim == 1 and leaf == "weight":  # norm scales
                v = 1 + 0.1 * r
            elif p.ndim == 1:  # biases, class embedding
                v = 0.5 * r if leaf == "class_embedding" else 0.1 * r
            else:
                v = r / p[0].numel() ** 0.5
            with torch.no_grad():
                p.copy_(v.to(torch.bfloat16).float())


CLIP_PREFIX = "model.vision_tower.vision_tower.vision_model."
MGM_NAMES = {"query": "vlm_uni_query_projector", "aux": "vlm_uni_aux_projector",
             "val": "vlm_uni_val_projector", "proj": "mm_projector"}


def to_mgm_state_dict(clip_model, trunk, m):
    """The key layout of a released MGM checkpoint (mm_projector, towers inside the shards)."""
    # transformers 5 dropped the `vision_model.` level; MGM's files (saved with 4.36) have it.
    sd = {CLIP_PREFIX + k: v for k, v in clip_model.state_dict().items()}
    for k, v in trunk.state_dict().items():
        if k.startswith(("stem.", "stages.")):
            sd["model.vision_tower_aux.vision_" + k] = v
    for short, name in MGM_NAMES.items():
        sd.update({f"model.{name}.{k}": v for k, v in m[short].state_dict().items()})
    return sd


def from_mgm_state_dict(sd, modules=None):
    """Torch modules (the tiny ones, or `modules` of the same kind) holding the weights of `sd`."""
    clip_model, trunk, m = modules or build_tiny()
    clip_model.load_state_dict({k[len(CLIP_PREFIX):]: v for k, v in sd.items() if k.startswith(CLIP_PREFIX)})
    trunk.load_state_dict({k[len("model.vision_tower_aux.vision_"):]: v for k, v in sd.items()
                           if k.startswith("model.vision_tower_aux.")}, strict=False)
    for short, name in MGM_NAMES.items():
        m[short].load_state_dict({k[len(f"model.{name}."):]: v for k, v in sd.items() if k.startswith(f"model.{name}.")})
    return clip_model.float().eval(), trunk.float().eval(), m.float().eval()


def load_tiny(folder):
    """Torch modules holding exactly the weights of the tiny checkpoint folder."""
    from safetensors.torch import load_file

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    sd = {}
    for shard in sorted(set(index["weight_map"].values())):
        sd.update(load_file(str(folder / shard)))
    return from_mgm_state_dict({k: v.float() for k, v in sd.items()})


# ---- the LLM side (mm_utils.tokenizer_image_token, prepare_inputs_labels_for_multimodal)

IMAGE_TOKEN_INDEX = -200
HF_CLASSES = {"gemma": "GemmaForCausalLM", "llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM"}


def tokenizer_image_token(prompt, tokenizer):
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    for x in [e for sub in zip(chunks, [[IMAGE_TOKEN_INDEX] * (offset + 1)] * len(chunks)) for e in sub][:-1]:
        ids.extend(x[offset:])
    return ids


def hf_llm(folder, family, config, tensors):
    """A transformers LLM from HF-named tensors, float32, eval; exact GELU for Gemma."""
    import transformers
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    hf_config = {**config, "model_type": family, "architectures": [HF_CLASSES[family]], "torch_dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(hf_config))
    save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    model = getattr(transformers, HF_CLASSES[family]).from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    if family == "gemma":
        # transformers 5 turns hidden_act="gelu" into the tanh form; MGM-2B used exact GELU
        for layer in model.model.layers:
            layer.mlp.act_fn = nn.GELU()
    return model.eval()


def splice(model, ids, image_features):
    """Text embeddings with each IMAGE_TOKEN_INDEX replaced by the next [T, H] image block.

    Gemma: MGM ran on transformers 4.36-4.38, whose GemmaModel.forward multiplied whatever
    inputs_embeds it got by sqrt(hidden), image tokens included. transformers 5 moved that
    factor into the embedding module, so here the raw lookup is spliced and the whole merged
    sequence scaled, as 4.36 did."""
    embed = model.get_input_embeddings()
    gemma = hasattr(embed, "embed_scale")
    pieces, text, k = [], [], 0
    for i in ids + [None]:
        if i is not None and i != IMAGE_TOKEN_INDEX:
            text.append(i)
            continue
        if text:
            t = torch.tensor(text)
            pieces.append(F.embedding(t, embed.weight) if gemma else embed(t))
            text = []
        if i is not None:
            pieces.append(image_features[k])
            k += 1
    merged = torch.cat(pieces)[None]
    if gemma:
        merged = merged * torch.tensor(model.config.hidden_size**0.5, dtype=merged.dtype)
    return merged


@torch.no_grad()
def greedy(model, embeds, steps):
    """First-step logits and `steps` greedy tokens (with the smallest top-1 margin seen)."""
    out = model(inputs_embeds=embeds, use_cache=True)
    logits0 = out.logits[0, -1]
    tokens, margin, logits, cache = [], float("inf"), logits0, out.past_key_values
    for _ in range(steps):
        top2 = torch.topk(logits, 2).values
        margin = min(margin, float(top2[0] - top2[1]))
        tokens.append(int(logits.argmax()))
        out = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=cache, use_cache=True)
        logits, cache = out.logits[0, -1], out.past_key_values
    return logits0, tokens, margin
