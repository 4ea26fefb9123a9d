"""Tiny random-weight checkpoints for the profile tests, built from the presets' own config
builders (same families and code path as the real presets, sizes shrunk for a 2-core CPU).

Every quantized linear keeps out_features % 32 == 0 and in_features % 64 == 0, the shapes
bitsandbytes' CPU NF4 kernels accept.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from qtrace.capture.models import PRESETS, save_checkpoint

_ROOT = Path(tempfile.mkdtemp(prefix="qtrace-test-models-"))
atexit.register(shutil.rmtree, _ROOT, True)

TINY = {
    # preset the family comes from -> config overrides
    "tiny-llama": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256),
    "qwen2.5-0.5b": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2),
    "modernbert-base": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                            num_attention_heads=4, max_position_embeddings=256, local_attention=16,
                            pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2),
}


@functools.cache
def tiny_checkpoint(preset: str, **extra: int) -> Path:
    """A saved checkpoint folder of `preset`'s family at tiny size (built once per test session)."""
    overrides = {**TINY[preset], **extra}
    name = preset + "".join(f"-{k}{v}" for k, v in sorted(extra.items()))
    dest = _ROOT / name
    if not (dest / "config.json").exists():
        save_checkpoint(PRESETS[preset].config(**overrides), PRESETS[preset].kind, dest)
    return dest
