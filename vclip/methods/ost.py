"""OST (Chen et al., CVPR 2024): Spatio-Temporal Descriptors scored by the Optimal Descriptor Solver.

Plain CLIP frame features (projected CLS token per frame, no temporal module); each class has N
spatial descriptors ("This is a video about {descriptor}") and N temporal descriptors ("A video of
{class_name} usually includes {descriptor}"), written by an LLM (``vclip describe``). Per kind and
per (video, class)::

    OT   = ⟨P*, cos(frames, descriptors)⟩_F      P* from entropic OT (vclip.methods.od_solver)
    pool = mean_t(unit frames) · mean_n(unit descriptors)       (not re-normalised)

    logits = scale · [½ (OT_t + pool_t) + ½ (OT_s + pool_s)]      fusion="official"
    logits = scale · ¼ (OT_t + pool_t + OT_s + pool_s)             fusion="paper" (Eq. 13)

Loss: ActionCLIP's KL contrastive loss as in the official code (``loss="kl"``): over the *global*
batch (frame features and labels all-gathered across processes, with gradient), the B × B logits
of every video against the descriptors of every sample's class, ``GT[i, j] = [y_i = y_j]``
softened as ``softmax(10·GT)``, KL(video→text) + KL(text→video) (summed as the official code;
``train.loss_weights={kl_v2t: 0.5, kl_t2v: 0.5}`` gives the paper's average); ``loss="ce"``:
cross-entropy over all classes.

Descriptors reach the method through the vocabulary: ``Vocabulary.descriptors[k]`` is class k's
descriptors of each kind in ``options.kinds`` order, ``num_descriptors`` each (spatial then
temporal by default). ``make_vocabulary`` fills it from ``model.options.{spatial,temporal}_descriptors``
(official OST JSON or vclip files) via :meth:`OST.vocabulary_descriptors`. The encoded descriptors
are cached by the base class (once per evaluation; recomputed with gradients while the text
tower trains).
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from vclip.engine.distributed import all_gather_with_grad
from vclip.errors import ConfigError
from vclip.methods.base import MethodOutput, VideoMethod, Vocabulary
from vclip.methods.od_solver import od_scores, pooled_scores

log = logging.getLogger(__name__)

KINDS = ("spatial", "temporal")


@dataclass
class OSTOptions:
    #: descriptor files (official OST JSON keyed by class index, or vclip's schema keyed by name)
    spatial_descriptors: Optional[str] = None
    temporal_descriptors: Optional[str] = None
    #: the label CSV (id,name) the official index-keyed files were written for, when it is not the
    #: run's label list: classes are then matched by name (e.g. the 600-class K600 files with
    #: kinetics_600_labels.csv, for a 160-class zero-shot draw). None: index k = the run's class k
    descriptor_labels: Optional[str] = None
    #: which descriptor kinds score the classes (the paper's Table 4b ablates them)
    kinds: list[str] = field(default_factory=lambda: ["spatial", "temporal"])
    #: descriptors per class and kind (official: 4)
    num_descriptors: int = 4
    spatial_template: str = "This is a video about {descriptor}"
    temporal_template: str = "A video of {class_name} usually includes {descriptor}"
    #: Sinkhorn: ε, iteration cap, tolerance on mean|Δr| (official: 0.1, 100, 1e-2)
    eps: float = 0.1
    max_iter: int = 100
    tol: float = 1e-2
    #: "global": one mean|Δr| over all problems of a call (official); "per_problem": batch-invariant
    stopping: Literal["global", "per_problem"] = "global"
    #: host check of the on-device stop flag every k iterations (0: never, always max_iter masked)
    check_every: int = 10
    #: Sinkhorn iteration: "auto" (scaling domain for ε ≥ 0.05, else log domain), "log", "scaling"
    domain: Literal["auto", "log", "scaling"] = "auto"
    #: "official": ½(OT+pool) per kind, summed; "paper": ¼ of the sum (Eq. 13); "ot" / "pool": one term
    fusion: Literal["official", "paper", "ot", "pool"] = "official"
    #: weight of an extra class-name logit (CLIP-mean against the templates; official: none)
    class_name_weight: float = 0.0
    #: "kl": the official multi-positive KL contrastive loss; "ce": cross-entropy over all classes
    loss: Literal["kl", "ce"] = "kl"
    #: KL targets softmax(target_scale · GT) (official: 10)
    kl_target_scale: float = 10.0
    #: keep the token-embedding table fixed (ViFi-CLIP's convention; OST: UNVERIFIED, default off)
    freeze_token_embedding: bool = False
    #: WiSE-FT in an evaluation config: blend this fine-tuned checkpoint into the CLIP of
    #: model.pretrained, θ = wise_ratio · θ_CLIP + (1 − wise_ratio) · θ_ft (OST zero-shot: 0.2)
    wise_checkpoint: Optional[str] = None
    wise_ratio: float = 0.2
    #: weight decay on every trainable parameter, biases, LayerNorms, embeddings and logit_scale
    #: included (the official optimizer has no no-decay group); off: vclip's rule (biases, < 2-D
    #: tensors and position/class embeddings and logit_scale are not decayed)
    decay_all_parameters: bool = False


def _fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


class OST(VideoMethod):
    Options = OSTOptions
    #: "kl": the two KL directions (official, summed); "ce": cross-entropy over all classes
    loss_weights = {"kl_v2t": 1.0, "kl_t2v": 1.0, "ce": 1.0}
    #: the class-name prompt (used only when class_name_weight > 0); the official code builds
    #: "a video of a person {}." and never uses it
    default_templates = ("a video of a person {}.",)

    def __init__(self, clip, *, num_frames: int, options: OSTOptions | None = None):
        super().__init__(clip, num_frames=num_frames, options=options)
        if self.options.freeze_token_embedding:
            self.clip.text.token_embedding.weight.requires_grad_(False)
        if self.options.wise_checkpoint:
            self.apply_wise(self.options.wise_checkpoint, self.options.wise_ratio)

    # ------------------------------------------------------------------ options / vocabulary
    @classmethod
    def parse_options(cls, options):
        opts = super().parse_options(options)
        for k in opts.kinds:
            if k not in KINDS:
                raise ConfigError(f"model.options.kinds: unknown kind {k!r} (known: {', '.join(KINDS)})")
        if not opts.kinds or len(set(opts.kinds)) != len(opts.kinds):
            raise ConfigError(f"model.options.kinds: expected one or both of {KINDS}, got {opts.kinds}")
        if opts.num_descriptors < 1:
            raise ConfigError(f"model.options.num_descriptors: must be >= 1, got {opts.num_descriptors}")
        for key in ("spatial_template", "temporal_template"):
            fs = _fields(getattr(opts, key))
            if "descriptor" not in fs or not fs <= {"descriptor", "class_name"}:
                raise ConfigError(f"model.options.{key}: {getattr(opts, key)!r} must contain {{descriptor}} and "
                                  "may contain {class_name}, nothing else in braces")
        if not opts.eps > 0:
            raise ConfigError(f"model.options.eps: must be > 0, got {opts.eps}")
        if opts.max_iter < 1 or opts.check_every < 0:
            raise ConfigError("model.options.max_iter must be >= 1 and model.options.check_every >= 0")
        if not 0.0 <= opts.wise_ratio <= 1.0:
            raise ConfigError(f"model.options.wise_ratio: must be in [0, 1], got {opts.wise_ratio}")
        return opts

    @classmethod
    def vocabulary_descriptors(cls, options, class_names: Sequence[str]) -> tuple[tuple[str, ...], ...]:
        """Per class, the raw descriptors of each kind in ``options.kinds`` order, read and checked
        from the descriptor files (``make_vocabulary`` calls this)."""
        from vclip.data.annotations import read_label_csv
        from vclip.errors import AnnotationError
        from vclip.text.descriptors import read_descriptors

        opts = cls.parse_options(options)
        index_names = None
        if opts.descriptor_labels:
            try:
                index_names = read_label_csv(opts.descriptor_labels)
            except AnnotationError as e:
                raise ConfigError(f"model.options.descriptor_labels: {e}") from None
        per_kind = []
        for kind in opts.kinds:
            path = getattr(opts, f"{kind}_descriptors")
            if not path:
                raise ConfigError(f"model.options.{kind}_descriptors: not set (a descriptor file written by "
                                  f"`vclip describe --kind ost-{'spatio' if kind == 'spatial' else 'temporal'}` "
                                  "or an official OST JSON)")
            ds = read_descriptors(path, class_names, num_per_class=opts.num_descriptors, index_names=index_names)
            per_kind.append(ds.texts())
        return tuple(tuple(d for texts in per_kind for d in texts[k]) for k in range(len(class_names)))

    def _split(self, vocab: Vocabulary) -> dict[str, list[list[str]]]:
        n, kinds = self.options.num_descriptors, self.options.kinds
        if vocab.descriptors is None:
            raise ConfigError("OST needs descriptors: set model.options.spatial_descriptors / temporal_descriptors "
                              "(or build the Vocabulary with descriptors=...)")
        out: dict[str, list[list[str]]] = {k: [] for k in kinds}
        for name, ds in zip(vocab.class_names, vocab.descriptors):
            if len(ds) != n * len(kinds):
                raise ConfigError(f"OST: class {name!r} has {len(ds)} descriptors; expected {n} per kind for kinds "
                                  f"{kinds} ({n * len(kinds)} in all, kinds in that order)")
            for i, k in enumerate(kinds):
                out[k].append(list(ds[i * n:(i + 1) * n]))
        return out

    def descriptor_sentences(self, vocab: Vocabulary) -> dict[str, list[str]]:
        """The sentences the text tower encodes, per kind, flattened class-major ([K·N])."""
        out = {}
        for kind, lists in self._split(vocab).items():
            tmpl = getattr(self.options, f"{kind}_template")
            out[kind] = [tmpl.format(descriptor=d, class_name=c) for c, ds in zip(vocab.class_names, lists)
                         for d in ds]
        return out

    # ------------------------------------------------------------------ the method interface
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Per-frame CLIP embeddings [B, T, E] (normalised in the scoring)."""
        b, t = video.shape[:2]
        return self.encode_frames(video).embeds.view(b, t, -1)

    def encode_vocabulary(self, vocab: Vocabulary) -> dict[str, torch.Tensor]:
        k, n = len(vocab), self.options.num_descriptors
        out = {}
        for kind, sentences in self.descriptor_sentences(vocab).items():
            out[kind] = F.normalize(self.encode_texts(sentences), dim=-1).view(k, n, -1)
        if self.options.class_name_weight:
            out["names"] = self.encode_prompt_ensemble(vocab)
        return out

    def outputs(self, video_features: torch.Tensor, class_features: dict[str, torch.Tensor]) -> MethodOutput:
        """The logits, and in ``aux`` the frame features (``frame_features``) and the class features
        (``class_features.<kind>``) the KL loss re-scores over the global batch."""
        aux = {"frame_features": video_features, **{f"class_features.{k}": v for k, v in class_features.items()}}
        return MethodOutput(self.logits(video_features, class_features), aux=aux)

    def logits(self, video_features: torch.Tensor, class_features: dict[str, torch.Tensor]) -> torch.Tensor:
        o = self.options
        kinds = [k for k in o.kinds if k in class_features]
        total = 0.0
        for kind in kinds:
            d = class_features[kind]
            ot = od_scores(video_features, d, eps=o.eps, max_iter=o.max_iter, tol=o.tol, stopping=o.stopping,
                           check_every=o.check_every, domain=o.domain) if o.fusion != "pool" else 0.0
            pool = pooled_scores(video_features, d) if o.fusion != "ot" else 0.0
            total = total + ot + pool
        weight = {"official": 0.5, "paper": 1.0 / (2 * len(kinds)), "ot": 1.0 / len(kinds),
                  "pool": 1.0 / len(kinds)}[o.fusion]
        if o.fusion == "official" and len(kinds) == 1:
            weight = 1.0  # one kind: its (OT + pool), as the official fusion does per kind (½ each of two)
        scores = weight * total
        if o.class_name_weight:
            v = F.normalize(video_features.float().mean(dim=1), dim=-1)
            scores = scores + o.class_name_weight * v @ class_features["names"].float().t()
        return self.clip.logit_scale.exp().float() * scores

    @classmethod
    def example_vocabulary(cls, num_classes: int, options=None) -> Vocabulary:
        opts = cls.parse_options(options or {})
        vocab = super().example_vocabulary(num_classes, options)
        per_class = opts.num_descriptors * len(opts.kinds)
        return Vocabulary(vocab.class_names, vocab.templates,
                          [tuple(f"{c} descriptor {i}" for i in range(per_class)) for c in vocab.class_names])

    def losses(self, output, targets: torch.Tensor, label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
        """``loss="kl"``: the official B × B KL over the global batch. The frame features and labels
        of every process are all-gathered (with gradient, :func:`all_gather_with_grad`) and every
        gathered video is scored against the descriptors of every gathered sample's class (duplicates
        included, one OT problem per pair, as the official code); every process computes the same
        loss, and DDP's averaged gradients equal one process's on the global batch. The class
        features need no gather: every process encodes the whole vocabulary."""
        if self.options.loss == "ce" or targets.dim() == 2:  # soft targets (Mixup/CutMix): soft CE
            return super().losses(output, targets, label_smoothing)
        frames = output.aux.get("frame_features")
        prefix = "class_features."
        classes = {k[len(prefix):]: v for k, v in output.aux.items() if k.startswith(prefix)}
        if frames is None or not classes:  # an output built elsewhere: the local batch's columns
            return kl_contrastive_loss(output.logits, targets, self.options.kl_target_scale)
        all_frames = all_gather_with_grad(frames)
        all_targets = all_gather_with_grad(targets)
        per_sample = {k: v[all_targets] for k, v in classes.items()}      # sample j's class, [B_g, ...]
        return kl_batch_loss(self.logits(all_frames, per_sample), all_targets, self.options.kl_target_scale)

    # ------------------------------------------------------------------ weight decay
    def decays(self, name: str, param: torch.Tensor) -> bool:
        """``decay_all_parameters``: every parameter (the official optimizer); else the base rule."""
        return True if self.options.decay_all_parameters else super().decays(name, param)

    # ------------------------------------------------------------------ WiSE-FT
    def apply_wise(self, checkpoint: str, ratio: float) -> None:
        """θ = ratio · θ_current (the CLIP initialisation) + (1 − ratio) · θ_checkpoint, over the
        parameters (buffers from the checkpoint), as the official ``wise_state_dict``."""
        from vclip.methods.wise import load_state, wise_state_dict

        ft = load_state(checkpoint)
        own = self.state_dict()
        missing = [k for k in own if k not in ft]
        if missing:
            raise ConfigError(f"model.options.wise_checkpoint: {checkpoint} lacks {missing[0]} "
                              f"(and {len(missing) - 1} more): not a checkpoint of this model")
        params = {k for k, _ in self.named_parameters()}
        mixed = wise_state_dict(own, {k: ft[k] for k in own}, ratio, parameter_names=params)
        self.load_state_dict(mixed)
        log.info("WiSE-FT: %s blended with the initial weights, %.2f initial / %.2f fine-tuned",
                 checkpoint, ratio, 1 - ratio)


def kl_contrastive_loss(logits: torch.Tensor, targets: torch.Tensor, target_scale: float = 10.0) -> dict[str, torch.Tensor]:
    """OST/ActionCLIP's KL contrastive loss from class logits [B, K] and class ids [B].

    The B × B logits of the official code (video i against the descriptors of sample j's class) are
    the columns ``logits[:, y_j]``; targets ``softmax(target_scale · [y_i = y_j])`` per row;
    loss = batch-mean KL for video→text plus the same for text→video (the transpose); the two
    terms are returned by name (``kl_v2t``, ``kl_t2v``) and summed by the trainer."""
    return kl_batch_loss(logits.float()[:, targets], targets, target_scale)


def kl_batch_loss(batch_logits: torch.Tensor, targets: torch.Tensor, target_scale: float = 10.0
                  ) -> dict[str, torch.Tensor]:
    """The official B × B form: ``batch_logits[i, j]`` scores video i against sample j's class."""
    lb = batch_logits.float()
    gt = (targets[:, None] == targets[None, :]).float()
    q = torch.softmax(target_scale * gt, dim=1)                       # symmetric GT: rows of qᵀ = q
    v2t = F.kl_div(F.log_softmax(lb, dim=1), q, reduction="batchmean")
    t2v = F.kl_div(F.log_softmax(lb.t(), dim=1), q, reduction="batchmean")
    return {"kl_v2t": v2t, "kl_t2v": t2v}
