"""Presets of real model shapes for the size sweep (issue 17), and family short names.

Config values are copied from the public ``config.json`` of each Hugging Face repository
(Qwen/Qwen2.5-{0.5B,1.5B,3B,7B,14B,32B,72B} and meta-llama/Meta-Llama-3-8B, as published in
2024): hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
num_key_value_heads, vocab_size, tie_word_embeddings, rope_theta, rms_norm_eps,
max_position_embeddings. Qwen2.5 up to 3B ties the LM head to the embedding (vocab 151936);
7B and up have their own head (vocab 152064).

These presets are built **on the device** (qtrace.capture.device_init): the model skeleton on
the meta device, weights drawn from a seeded normal directly on the GPU, quantized in memory by
transformers' own bitsandbytes quantizer. A 32B model would otherwise need a 65 GB disk copy and
minutes of CPU init per run. `qwen2.5-0.5b` stays the on-disk preset it always was (the
reference traces were taken with it); the family axis resolves it like the others.

No torch here: `qtrace presets` and the sweep's name resolution stay cheap.
"""

from __future__ import annotations

from typing import Any

_QWEN_COMMON: dict[str, Any] = dict(max_position_embeddings=32768, rope_theta=1000000.0,
                                    bos_token_id=151643, eos_token_id=151643)

# name -> (config kwargs, published parameter count in billions, source repository)
SIZE_SHAPES: dict[str, tuple[dict[str, Any], float, str]] = {
    "qwen2.5-1.5b": (dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                          num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True,
                          rms_norm_eps=1e-6, **_QWEN_COMMON), 1.54, "Qwen/Qwen2.5-1.5B"),
    "qwen2.5-3b": (dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                        num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True,
                        rms_norm_eps=1e-6, **_QWEN_COMMON), 3.09, "Qwen/Qwen2.5-3B"),
    "qwen2.5-7b": (dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                        num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False,
                        rms_norm_eps=1e-6, **_QWEN_COMMON), 7.62, "Qwen/Qwen2.5-7B"),
    "qwen2.5-14b": (dict(vocab_size=152064, hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
                         num_attention_heads=40, num_key_value_heads=8, tie_word_embeddings=False,
                         rms_norm_eps=1e-5, **_QWEN_COMMON), 14.7, "Qwen/Qwen2.5-14B"),
    "qwen2.5-32b": (dict(vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                         num_attention_heads=40, num_key_value_heads=8, tie_word_embeddings=False,
                         rms_norm_eps=1e-5, **_QWEN_COMMON), 32.8, "Qwen/Qwen2.5-32B"),
    # 72B: 145 GB of fp16 weights, more than one 141 GB H200 holds: the --device-map case (issue 19).
    # (The Instruct checkpoint writes rms_norm_eps 1e-6; the eps changes no shape or count.)
    "qwen2.5-72b": (dict(vocab_size=152064, hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
                         num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False,
                         rms_norm_eps=1e-5, **_QWEN_COMMON), 72.7, "Qwen/Qwen2.5-72B"),
    "llama3-8b": (dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False,
                       rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=8192,
                       bos_token_id=128000, eos_token_id=128001), 8.03, "meta-llama/Meta-Llama-3-8B"),
}
SIZE_FAMILIES = {"qwen2.5-1.5b": "qwen2", "qwen2.5-3b": "qwen2", "qwen2.5-7b": "qwen2", "qwen2.5-14b": "qwen2",
                 "qwen2.5-32b": "qwen2", "qwen2.5-72b": "qwen2", "llama3-8b": "llama"}
# The on-disk 0.5B preset's published count (Qwen/Qwen2.5-0.5B), for the meta-device test.
PUBLISHED_BILLIONS = {"qwen2.5-0.5b": 0.49, **{k: v[1] for k, v in SIZE_SHAPES.items()}}

# A tiny family for CPU tests of the model axis: device-initialised like the big ones. Every
# quantized linear has out % 32 == 0 and in % 64 == 0 (bitsandbytes' CPU NF4 blocks).
TINY_SHAPES: dict[str, dict[str, Any]] = {
    "tiny-qwen-a": dict(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                        max_position_embeddings=1024),
    "tiny-qwen-b": dict(vocab_size=1024, hidden_size=192, intermediate_size=384, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                        max_position_embeddings=1024),
}


def family_prefix(name: str) -> str:
    """'qwen2.5-0.5b' -> 'qwen2.5-': what a short name after the first is appended to."""
    return name.rsplit("-", 1)[0] + "-" if "-" in name else ""


def expand_models(text: str | list[str] | tuple[str, ...] | None, known: set[str] | dict[str, Any]) -> list[str]:
    """'qwen2.5-0.5b,1.5b,3b' -> ['qwen2.5-0.5b', 'qwen2.5-1.5b', 'qwen2.5-3b'].

    An item that is not a known preset resolves within the family of the previous full name
    (its prefix up to the last '-'); anything else (a path, an HF id) is kept as written.
    """
    if text is None:
        return []
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text)]
    out: list[str] = []
    prefix = ""
    for item in items:
        if not item:
            continue
        name = item
        if item not in known and prefix and f"{prefix}{item}" in known:
            name = f"{prefix}{item}"
        elif item in known:
            prefix = family_prefix(item)
        if name not in out:
            out.append(name)
    return out
