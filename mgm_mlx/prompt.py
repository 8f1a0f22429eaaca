"""Prompts: the conversation templates of mgm/conversation.py, byte for byte, how one is
chosen, and the reference's chunk-wise tokenization around <image>. Text only: the
Processor (processor.py) puts these together with the tokenizer and the pixels."""

IMAGE = "<image>"
IMAGE_TOKEN_INDEX = -200  # mgm/constants.py
# What a tokenizer may read from a model folder (and all that is copied or downloaded of it).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "generation_config.json", "chat_template.jinja", "chat_template.json",
    "vocab.json", "merges.txt",
)

# name -> system, (user role, assistant role), separators; mgm/conversation.py
TEMPLATES = {
    "gemma": dict(system="", roles=("user", "model"), seps=("", "<eos>")),
    "vicuna_v1": dict(
        system="A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        roles=("USER", "ASSISTANT"),
        seps=(" ", "</s>"),
    ),
    "mistral_instruct": dict(system="", roles=("USER", "ASSISTANT"), seps=("<s>", "</s>")),
    "chatml_direct": dict(
        system="<|im_start|>system\nAnswer the questions.",
        roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
        seps=("<|im_end|>", None),
    ),
    "llama_3": dict(
        system="<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision "
        "assistant. You are able to understand the visual content that the user provides, and "
        "assist the user with a variety of tasks using natural language.",
        # the assistant header really says "system" (roles[1] in the reference)
        roles=("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>system<|end_header_id|>\n\n"),
        seps=("<|eot_id|>", None),
    ),
}
# Tokens that end a reply (the first is the tokenizer's own end in the reference).
STOP_TOKENS = {
    "gemma": ("<eos>", "<end_of_turn>"),
    "vicuna_v1": ("</s>",),
    "mistral_instruct": ("</s>",),
    "chatml_direct": ("<|im_end|>",),
    "llama_3": ("<|eot_id|>", "<|end_of_text|>"),
}
SYSTEM_PREFIX = {
    "chatml_direct": "<|im_start|>system\n",
    "llama_3": "<|start_header_id|>system<|end_header_id|>\n\n",
}


def system_text(template: str, system: str | None) -> str:
    """The template's system string, or the user's text in the template's system form."""
    if system is None:
        return TEMPLATES[template]["system"]
    if template == "gemma":
        raise ValueError("the gemma template has no system prompt")
    return SYSTEM_PREFIX.get(template, "") + system


def format_prompt(template: str, messages: list, system: str | None = None) -> str:
    """messages: [user, assistant, user, ..., None]; a None (last) asks for the next reply.

    The first user message carries its images as leading "<image>\n" already."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose from {', '.join(TEMPLATES)}")
    t = TEMPLATES[template]
    roles, (sep, sep2) = t["roles"], t["seps"]
    sys = system_text(template, system)
    turns = [(roles[i % 2], m) for i, m in enumerate(messages)]
    if template == "vicuna_v1":  # SeparatorStyle.TWO
        out = sys + sep
        for i, (role, m) in enumerate(turns):
            out += f"{role}: {m}{(sep, sep2)[i % 2]}" if m else f"{role}:"
    elif template == "gemma":  # SeparatorStyle.GEMMA
        out = sys + sep
        for i, (role, m) in enumerate(turns):
            out += f"<start_of_turn>{role}\n{m}<end_of_turn>\n{(sep, sep2)[i % 2]}" if m else f"<start_of_turn>{role}\n"
    elif template == "mistral_instruct":  # SeparatorStyle.LLAMA_2
        out = ""
        for i, (_, m) in enumerate(turns):
            if not m:
                continue
            if i == 0 and sys:
                m = f"<<SYS>>\n{sys}\n<</SYS>>\n\n" + m
            out += sep + f"[INST] {m} [/INST]" if i % 2 == 0 else f" {m} {sep2}"
        out = out.lstrip(sep)  # str.lstrip takes characters, as in the reference
    else:  # MPT (chatml_direct) and LLAMA_3 share one form
        out = sys + sep
        for role, m in turns:
            out += role + m + sep if m else role
    return out


def label_images(prompt: str) -> str:
    """With two or more images, put "Image k:" before the k-th <image> (serve/cli.py)."""
    parts = prompt.split(IMAGE)
    if len(parts) < 3:
        return prompt
    return "".join(f"{p}Image {i + 1}:{IMAGE}" for i, p in enumerate(parts[:-1])) + parts[-1]


def tokenize(tokenizer, prompt: str) -> list:
    """mm_utils.tokenizer_image_token: each chunk around <image> on its own, BOS kept only
    from the first chunk, IMAGE_TOKEN_INDEX between chunks."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(IMAGE)]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    return ids


def pick_template(config: dict, vocab: dict | None = None) -> str:
    """From the config and tokenizer, not the folder name (the reference CLI gives MGM-8B
    vicuna_v1; its eval scripts use llama_3)."""
    from .language import family

    name = family(config)
    vocab = vocab or {}
    if name == "gemma":
        return "gemma"
    if name == "mixtral":
        return "mistral_instruct"
    if "<|eot_id|>" in vocab or config.get("vocab_size") == 128256:
        return "llama_3"
    if "<|im_start|>" in vocab or config.get("vocab_size") == 64000:
        return "chatml_direct"
    return "vicuna_v1"
