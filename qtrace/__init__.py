"""qtrace: why is my quantized model slower and hungrier than fp16?"""

__version__ = "0.1.0"
