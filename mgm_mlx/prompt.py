"""Conversation templates (mgm/conversation.py names) and how one is chosen."""

TEMPLATES = ("gemma", "vicuna_v1", "mistral_instruct", "chatml_direct", "llama_3")


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


class Processor:
    """Turns images and text into model inputs: the tokenizer, image size and template."""

    def __init__(self, tokenizer, image_size: int, template: str):
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.template = template

    @classmethod
    def from_folder(cls, path, config: dict, image_size: int, template: str | None = None):
        from mlx_lm.utils import load_tokenizer

        if template is not None and template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; choose from {', '.join(TEMPLATES)}")
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # AutoTokenizer warns that it does not know mgm_* types
        try:
            tokenizer = load_tokenizer(path)
        except Exception as e:
            raise ValueError(f"cannot load the tokenizer in {path} ({str(e).splitlines()[0][:200]})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        template = template or config.get("mgm_template") or pick_template(config, tokenizer.get_vocab())
        return cls(tokenizer, image_size, template)

    def images(self, sources):
        """Image paths / PIL images / arrays -> high-res pixels [N, S, S, 3]."""
        import mlx.core as mx

        from .image import preprocess

        return mx.stack([mx.array(preprocess(s, self.image_size)) for s in sources])
