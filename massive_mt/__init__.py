"""massive_mt: massively multilingual translation training under DeepSpeed ZeRO."""

__version__ = "0.1.0"
