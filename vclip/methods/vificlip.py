"""ViFi-CLIP (Rasheed et al., CVPR 2023): CLIP-mean with both towers fine-tuned on video,
cross-entropy over the classes. Faithful to the official code: the training text is
"a photo of a {}." and the token-embedding table stays fixed (the official model feeds
pre-computed token embeddings to the text encoder), which ``freeze_token_embedding`` controls.
"""

from __future__ import annotations

from dataclasses import dataclass

from vclip.methods.clip import CLIPMean


@dataclass
class ViFiCLIPOptions:
    #: keep the token-embedding table fixed, as the official code effectively does
    freeze_token_embedding: bool = True


class ViFiCLIP(CLIPMean):
    Options = ViFiCLIPOptions
    default_templates = ("a photo of a {}.",)

    def __init__(self, clip, *, num_frames: int, options: ViFiCLIPOptions | None = None):
        super().__init__(clip, num_frames=num_frames, options=options)
        if self.options.freeze_token_embedding:
            self.clip.text.token_embedding.weight.requires_grad_(False)
