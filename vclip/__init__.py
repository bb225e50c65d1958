"""vclip: CLIP image-text models turned into video action recognizers."""

__version__ = "0.1.0"
