"""Zero-shot CLIP on video ("CLIP-mean"): per-frame image embeddings averaged over time, scored by
cosine similarity against prompt-ensembled class embeddings, scaled by CLIP's logit scale.

    v = mean_t f_img(x_t),   s_k = exp(τ) · cos(v, mean_j f_txt(template_j(class_k)))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vclip.methods.base import VideoMethod, Vocabulary


class CLIPMean(VideoMethod):
    default_templates = ("{}",)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        b, t = video.shape[:2]
        frames = self.encode_frames(video).embeds
        return frames.view(b, t, -1).mean(dim=1)

    def encode_vocabulary(self, vocab: Vocabulary) -> torch.Tensor:
        return self.encode_prompt_ensemble(vocab)

    def logits(self, video_features: torch.Tensor, class_features: torch.Tensor) -> torch.Tensor:
        v = F.normalize(video_features, dim=-1)
        return self.clip.logit_scale.exp() * v @ class_features.to(v.dtype).t()
