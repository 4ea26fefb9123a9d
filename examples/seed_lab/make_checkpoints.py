"""Random-weight stand-ins for the seed lab's two merged classifiers, saved as safetensors twice:
fp32 (what a merged Trainer checkpoint most likely is) and fp16.

    python examples/seed_lab/make_checkpoints.py OUT_DIR [--models encoder,decoder] [--tiny]

Shapes come from qtrace's presets (ModernBERT-base and Qwen2.5-0.5B); the head is
AutoModelForSequenceClassification with num_labels=113, as in the notebook. `--tiny` builds the
test-size shapes (for a CPU check of the scripts). No network: configs are built locally.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NUM_LABELS = 113
PRESET = {"encoder": "modernbert-base", "decoder": "qwen2.5-0.5b"}
TINY = {  # the families' test sizes (tests/_qtrace_tiny.py), with out/in features bitsandbytes accepts
    "encoder": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                    max_position_embeddings=256, local_attention=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                    cls_token_id=1, sep_token_id=2),
    "decoder": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2),
}


def build(kind: str, out: Path, tiny: bool) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from qtrace.capture.models import PRESETS

    cfg = PRESETS[PRESET[kind]].config(**(TINY[kind] if tiny else {}))
    cfg.num_labels = NUM_LABELS
    if kind == "decoder" and cfg.pad_token_id is None:  # the notebook's fix_pad_token: pad = eos
        cfg.pad_token_id = cfg.eos_token_id
    torch.manual_seed(42)
    # Initialised on the GPU when there is one (a 0.5B model's random init is slow on a host CPU).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForSequenceClassification.from_config(cfg).to(torch.float32)
    for dtype, tag in ((torch.float32, "fp32"), (torch.float16, "fp16")):
        dest = out / f"{kind}-{tag}"
        model.to(dtype).save_pretrained(dest, safe_serialization=True)
        print(f"{dest}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {tag}", flush=True)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--models", default="encoder,decoder")
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args(argv)
    for kind in a.models.split(","):
        build(kind, a.out, a.tiny)
    return 0


if __name__ == "__main__":
    sys.exit(main())
