"""Loading MoE checkpoints and their tokenizers (``AutoTokenizer`` or the byte-level one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

BYTE_TOKENIZER_FILE = "siftmoe_byte_tokenizer.json"


class ByteTokenizer:
    """Byte-level tokenizer: UTF-8 bytes are ids 0..255, then BOS, EOS, PAD."""

    bos_token_id = 256
    eos_token_id = 257
    pad_token_id = 258
    vocab_size = 259

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.bos_token_id] + ids if add_special_tokens else ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def __call__(self, text: str, **_) -> dict:
        return {"input_ids": self.encode(text)}

    def save_pretrained(self, directory: str | Path) -> Path:
        path = Path(directory) / BYTE_TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"type": "bytes", "bos": self.bos_token_id, "eos": self.eos_token_id,
                                    "pad": self.pad_token_id, "vocab_size": self.vocab_size}))
        return path

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ByteTokenizer":
        spec = json.loads((Path(directory) / BYTE_TOKENIZER_FILE).read_text())
        if spec.get("type") != "bytes":
            raise ValueError(f"{directory}: unknown tokenizer spec {spec}")
        return cls()


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (ByteTokenizer or a transformers tokenizer)."""
    if isinstance(tokenizer, ByteTokenizer):
        return tokenizer.encode(text)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def load_tokenizer(path_or_id: str | Path, **kwargs):
    """The byte tokenizer saved next to a checkpoint, else ``AutoTokenizer.from_pretrained``."""
    p = Path(path_or_id)
    if p.is_dir() and (p / BYTE_TOKENIZER_FILE).exists():
        return ByteTokenizer.from_pretrained(p)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path_or_id), **kwargs)


def load_moe_model(path_or_id: str | Path, *, dtype=None, device: str = "cpu", with_tokenizer: bool = True, **kwargs):
    """Load a causal-LM MoE checkpoint (local dir or hub id) in eval mode.

    Returns ``(model, tokenizer)`` (tokenizer ``None`` when ``with_tokenizer``
    is false).  Raises :class:`~siftmoe_gym.hf.adapters.UnsupportedModelError`
    when the model has no supported MoE layers.
    """
    from transformers import AutoModelForCausalLM

    from .adapters import moe_layers

    kw = dict(kwargs)
    if dtype is not None:
        kw["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(str(path_or_id), **kw)
    model.to(device).eval()
    moe_layers(model)  # fail early and clearly
    tok = load_tokenizer(path_or_id) if with_tokenizer else None
    return model, tok
