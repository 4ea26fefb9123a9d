"""Build a preset model directly on its device: no checkpoint on disk, no CPU init.

The path mirrors what `from_pretrained(..., quantization_config=BitsAndBytesConfig(...))` does,
step for step, minus reading a file:

1. the skeleton is built by `from_config` with parameters on the meta device
   (`accelerate.init_empty_weights(include_buffers=False)`: buffers such as rotary `inv_freq`
   are computed for real, as from_pretrained computes them);
2. for int8/nf4 transformers' own quantizer (`AutoHfQuantizer.from_config`) runs
   `preprocess_model`, i.e. `replace_with_bnb_linear` with the same skip list (the heads),
   so the module classes are those a loaded checkpoint gets;
3. each parameter is drawn in fp16 from a generator seeded by (seed, parameter name) on the
   device, then handed over as the loader's converters hand it over: `Int8Params(w, **state)`
   quantized on the device (`int8_vectorwise_quant`, giving CB/SCB) for Linear8bitLt,
   `Params4bit(w, **state).to(device)` (giving `quant_state`, double-quantized absmax) for
   Linear4bit, a plain Parameter in the compute dtype otherwise;
4. tied weights are re-tied, `model.hf_quantizer` is set and `postprocess_model` runs
   (is_loaded_in_8bit / is_loaded_in_4bit, config.quantization_config).

Same fp16 values through both paths give the same quantized state and the same outputs
(tests/test_size_sweep.py checks module types, dtypes, shapes, CB/SCB, quant_state fields and
logits against from_pretrained of the saved checkpoint on the CPU).
"""

from __future__ import annotations

import zlib
from typing import Any

# Weights as transformers' _init_weights draws them for these families: N(0, initializer_range)
# for linear and embedding weights, ones for norm weights, zeros for biases.
DEFAULT_STD = 0.02


def param_seed(seed: int, name: str) -> int:
    """One generator seed per parameter name: fp16, int8 and nf4 builds get the same fp16
    weights whatever their module classes (the order of creation does not matter)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def draw(name: str, shape: tuple[int, ...], kind: str, device: Any, seed: int, std: float = DEFAULT_STD) -> Any:
    """The fp16 value of parameter `name`: normal, ones or zeros, generated on `device`."""
    import torch

    if kind == "ones":
        return torch.ones(shape, dtype=torch.float16, device=device)
    if kind == "zeros":
        return torch.zeros(shape, dtype=torch.float16, device=device)
    gen = torch.Generator(device=device).manual_seed(param_seed(seed, name))
    # Drawn in fp32 and rounded once to fp16, as a saved fp16 checkpoint of the same draw holds it.
    value = torch.empty(shape, dtype=torch.float32, device=device).normal_(0.0, std, generator=gen)
    return value.to(torch.float16)


def init_kind(module: Any, pname: str) -> str:
    from qtrace.capture.models import is_norm

    if pname == "bias":
        return "zeros"
    if is_norm(module):
        return "ones"
    return "normal"


def build_on_device(config: Any, auto: Any, dtype: Any, device: Any, quant: Any = None, seed: int = 0,
                    device_map: str | None = None, quantize_built: Any = None) -> Any:
    """The model for `config` (class `auto`, e.g. AutoModelForCausalLM) on `device` in `dtype`,
    quantized by `quant` (a BitsAndBytesConfig, or None), with seeded random weights.

    device_map: an accelerate strategy ("auto", "balanced", ...): the layers are spread over the
    visible GPUs as from_pretrained spreads them (transformers' device-map step, then
    `dispatch_model`'s hooks), each parameter drawn directly on its GPU with the same seeded value.
    quantize_built(model, quantizer): the backend's step for weights that transformers quantizes
    while loading them (torchao), run once the weights are drawn and tied, as transformers orders it;
    bitsandbytes needs none (its layers are swapped in before the weights are drawn).
    """
    import torch
    from accelerate import init_empty_weights

    from qtrace.capture.models import _transformers_major

    dtype_key = "dtype" if _transformers_major() >= 5 else "torch_dtype"
    with init_empty_weights(include_buffers=False):
        model = auto.from_config(config, **{dtype_key: dtype})
    quantizer = None
    strategy = device_map
    device_map = {"": device.index if device.type == "cuda" else "cpu"}
    if quant is not None:
        from transformers.quantizers import AutoHfQuantizer

        quantizer = AutoHfQuantizer.from_config(quant, pre_quantized=False)
        quantizer.preprocess_model(model=model, dtype=dtype, device_map=device_map)
    spread = None
    if strategy is not None:
        from qtrace.capture.multi_device import infer_map

        spread = infer_map(model, strategy, dtype, quantizer)
    std = float(getattr(config, "initializer_range", DEFAULT_STD) or DEFAULT_STD)
    with torch.no_grad():
        materialize(model, dtype, device, seed, std, spread)
        for mod_name, module in model.named_modules():
            target = _device_for(spread, mod_name, device)
            for bname, buf in list(module._buffers.items()):
                if buf is not None and buf.device != target:
                    module._buffers[bname] = buf.to(target)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    if quantizer is not None and quantize_built is not None:
        quantize_built(model, quantizer)
    if spread is not None:
        from accelerate import dispatch_model

        # The hooks that move activations from stage to stage; sets model.hf_device_map.
        dispatch_model(model, device_map=spread, skip_keys=getattr(model, "_skip_keys_device_placement", None))
    if quantizer is not None:
        model.hf_quantizer = quantizer
        quantizer.postprocess_model(model)
    model.eval()  # from_pretrained returns eval mode (bnb's int8 CPU path differs in training mode)
    return model


def _device_for(spread: dict[str, Any] | None, name: str, device: Any) -> Any:
    if spread is None:
        return device
    from qtrace.capture.multi_device import device_of

    return device_of(spread, name)


def materialize(model: Any, dtype: Any, device: Any, seed: int, std: float = DEFAULT_STD,
                spread: dict[str, Any] | None = None) -> None:
    """Replace every meta parameter by its seeded value on `device`, or on its device under the map
    `spread` (quantized where the module is a bnb layer)."""
    import torch

    bnb = _bnb_or_none()
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for pname, p in list(module._parameters.items()):
            if p is None or id(p) in seen or not p.is_meta:
                continue
            seen.add(id(p))
            full = f"{mod_name}.{pname}" if mod_name else pname
            where = _device_for(spread, mod_name, device)
            value = draw(full, tuple(p.shape), init_kind(module, pname), where, seed, std)
            if bnb is not None and pname == "weight" and isinstance(module, bnb.nn.Linear8bitLt):
                state = dict(p.__dict__)
                state.pop("SCB", None)  # as transformers' Bnb8bitQuantize: fresh statistics
                state.pop("CB", None)
                new = bnb.nn.Int8Params(value, requires_grad=False, **state)
                # from_pretrained quantizes in Int8Params.to(cuda) from a CPU tensor; the value is
                # already on the device here, where .to() would skip it, so call the same step.
                new = new._quantize(where)
            elif bnb is not None and pname == "weight" and isinstance(module, bnb.nn.Linear4bit):
                new = bnb.nn.Params4bit(value.to(dtype), requires_grad=False, **p.__dict__).to(where)
            else:
                new = torch.nn.Parameter(value.to(dtype), requires_grad=p.requires_grad)
            module._parameters[pname] = new


def _bnb_or_none() -> Any:
    try:
        import bitsandbytes
    except ImportError:  # fp16-only builds do not need it
        return None
    return bitsandbytes
