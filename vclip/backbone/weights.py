"""Loading and saving CLIP weights in every format users have.

``load_clip(source)`` accepts:

* a known name (``openai/ViT-B-32``, ``openai/ViT-B-16``, ``openai/ViT-L-14``,
  ``openai/ViT-L-14-336``) or a Hugging Face hub id (``openai/clip-vit-base-patch32``): downloaded
  once into the cache (``vclip.backbone.hub``);
* OpenAI's released ``.pt`` files (TorchScript archives) and plain OpenAI-layout state dicts;
* open_clip checkpoints (``.pt``/``.bin``/``.safetensors``, bare or ``{"state_dict": ...}`` from
  training, ``module.``-prefixed; an ``open_clip_config.json`` beside the weights is read);
* transformers ``CLIPModel`` directories (``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``);
* vclip's own format: a directory with ``config.json`` + ``model.safetensors`` (``save_clip``).

The architecture is read from the config when there is one, otherwise inferred from the tensor
shapes. Pickled files are read with ``torch.load(weights_only=True)``; a file that needs full
unpickling is refused with an error naming it, unless ``trust_checkpoint=True``. TorchScript
archives are opened with ``torch.jit.load`` (no Python pickle is executed).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Callable, Mapping

import torch

from vclip.backbone import convert
from vclip.backbone.config import CLIPConfig
from vclip.backbone.model import CLIP, interpolate_positional_embedding
from vclip.errors import CheckpointError
from vclip.io import atomic_write

log = logging.getLogger(__name__)

VCLIP_FORMAT = "vclip-clip"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                "open_clip_pytorch_model.bin")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def read_state_dict(path: str | os.PathLike, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a weight file (safetensors, TorchScript, or a ``torch.save`` pickle), unwrapped
    from ``{"state_dict"|"model"|"module": ...}`` and stripped of a ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            obj = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
            raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None
    elif _is_torchscript(path):
        try:
            obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as e:
            raise CheckpointError(f"{path}: TorchScript archive could not be loaded: {e}") from None
    else:
        obj = _torch_load(path, trust_checkpoint)
    return unwrap_state_dict(obj, path)


def _torch_load(path: Path, trust: bool):
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Weights only load failed" in str(e):
            raise CheckpointError(
                f"{path}: this checkpoint contains pickled Python objects beyond tensors and needs full "
                "unpickling, which can run arbitrary code. If you trust its source, pass "
                "trust_checkpoint=True (CLI: --trust-checkpoint)."
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt pickle: {e})") from None
    except Exception as e:  # torch/pickle raise many types (RuntimeError, EOFError, KeyError, ...) on bad bytes
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {msg}") from None


def unwrap_state_dict(obj, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The flat ``name → tensor`` state dict inside a loaded checkpoint object.

    Descends through up to three levels of training wrappers (``state_dict``, ``model``, ``module``,
    ``model_state_dict`` entries of dicts holding no tensors themselves), keeps only the tensor
    entries and strips a ``module.`` prefix present on every key (DDP). ``path`` only names the
    source in errors: raises :class:`~vclip.errors.CheckpointError` when no state dict or no tensor
    is found."""
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in ("state_dict", "model", "module", "model_state_dict"):
                if isinstance(obj.get(key), dict):
                    obj = obj[key]
                    break
            else:
                break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{path}: contains no tensors")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _find_weights(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: no weight file (looked for {', '.join(WEIGHT_FILES)})")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from None


def _open_clip_activation(path: Path) -> str:
    """The activation an open_clip ``open_clip_config.json`` declares (its ``quick_gelu`` flag)."""
    d = _read_json(path)
    cfg = d.get("model_cfg", d)
    return "quick_gelu" if cfg.get("quick_gelu", False) else "gelu"


def load_clip(
    source: str | os.PathLike,
    *,
    trust_checkpoint: bool = False,
    config: CLIPConfig | None = None,
    activation: str | None = None,
    image_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> CLIP:
    """Build a ``CLIP`` from a name, hub id, file or directory (see module docstring).

    ``config`` overrides the architecture read from the source; ``activation`` ("quick_gelu" or
    "gelu") is needed for open_clip checkpoints of non-QuickGELU models when no
    ``open_clip_config.json`` says so; ``image_size`` interpolates the positional embedding to
    another input resolution.
    """
    path = Path(source)
    if not path.exists():
        text = str(source)
        if path.suffix in (".pt", ".pth", ".bin", ".safetensors") or text.startswith((".", "/", "~")) \
                or text.count("/") > 1:
            raise CheckpointError(f"{source}: no such file or directory")
        from vclip.backbone import hub

        path = hub.resolve_pretrained(text)
    sd, cfg = _read_source(path, trust_checkpoint, activation)
    if config is not None:
        cfg = config
    if image_size is not None and image_size != cfg.vision.image_size:
        cfg.vision.image_size = image_size
        sd["visual.positional_embedding"] = interpolate_positional_embedding(
            sd["visual.positional_embedding"], cfg.vision.num_tokens
        )
        log.info("interpolated the positional embedding of %s to %d px", path, image_size)
    model = CLIP(cfg)
    load_state_dict_checked(model, sd, path)
    return model.to(device=device, dtype=dtype)


def _read_source(path: Path, trust: bool, activation: str | None) -> tuple[dict, CLIPConfig]:
    act = activation
    if path.is_dir():
        cfg_file = path / "config.json"
        if cfg_file.is_file():
            meta = _read_json(cfg_file)
            if meta.get("format") == VCLIP_FORMAT:
                sd = read_state_dict(_find_weights(path), trust)
                return convert.to_vclip(sd), _vclip_config(meta, cfg_file)
            if meta.get("model_type") == "clip" or "CLIPModel" in meta.get("architectures", []):
                sd = read_state_dict(_find_weights(path), trust)
                if convert.detect_layout(sd) != "hf":
                    raise CheckpointError(f"{path}: config.json says transformers CLIP but the weights are not")
                return convert.hf_to_vclip(sd), convert.config_from_hf(meta, str(cfg_file))
            raise CheckpointError(
                f"{cfg_file}: neither a vclip nor a transformers CLIP config "
                f"(model_type={meta.get('model_type')!r}); X-CLIP and other video checkpoints load through their method"
            )
        weights = _find_weights(path)
    else:
        weights = path
    oc = weights.parent / "open_clip_config.json"
    if act is None and oc.is_file():
        act = _open_clip_activation(oc)
    sd = read_state_dict(weights, trust)
    try:
        layout = convert.detect_layout(sd)
    except CheckpointError as e:
        raise CheckpointError(f"{weights}: {e}") from None
    if layout == "hf":
        raise CheckpointError(f"{weights}: transformers CLIP weights need their config.json beside them")
    sd = convert.to_vclip(sd)
    if weights.suffix == ".safetensors":
        meta = _safetensors_metadata(weights)
        if meta.get("format") == VCLIP_FORMAT:
            return sd, _vclip_config(json.loads(meta["config"]), weights)
    try:
        cfg = convert.infer_config(sd, activation=act or "quick_gelu")
    except CheckpointError as e:
        raise CheckpointError(f"{weights}: {e}") from None
    return sd, cfg


def _safetensors_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def _vclip_config(meta: dict, where: Path) -> CLIPConfig:
    try:
        return CLIPConfig.from_dict(meta["clip"] if "clip" in meta else meta)
    except Exception as e:
        raise CheckpointError(f"{where}: invalid vclip config: {e}") from None


def state_differences(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
                      ) -> tuple[list[str], list[str], list[str]]:
    """What keeps ``state`` from loading strictly into a model whose state dict is ``own``: the keys
    ``own`` has and ``state`` lacks, the keys ``state`` has and ``own`` lacks, and the keys both hold
    with different shapes (each in ``own``'s / ``state``'s order)."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, shaped


def load_state_dict_checked(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: Path | str) -> None:
    """``load_state_dict(strict=True)`` with errors that name the file and the offending keys."""
    own = model.state_dict()
    missing, unexpected, shaped = state_differences(own, sd)
    missing, unexpected = sorted(missing), sorted(unexpected)
    wrong = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in shaped]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {_few(wrong)}")
    if problems:
        raise CheckpointError(f"{source}: weights do not fit the architecture — " + "; ".join(problems))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


def _few(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f", … (+{len(items) - n})" if len(items) > n else "")


def write_files_atomically(directory: str | os.PathLike,
                           writers: Mapping[str, Callable[[Path], object]]) -> Path:
    """Create the files of a model directory, each one atomically (:func:`vclip.io.atomic_write`).

    ``writers`` maps a file name to a function that writes that file's content to the path it is
    given (a temporary sibling, renamed onto ``directory / name`` once the function returns). Files
    are written in the mapping's order, so put the one whose presence marks the directory complete
    (``config.json``) last. The folder is created if needed; a writer that raises leaves the file it
    was writing untouched (and the files before it written). Returns ``directory`` as a Path."""
    directory = Path(directory)
    for name, write in writers.items():
        with atomic_write(directory / name) as tmp:
            write(tmp)
    return directory


def save_clip(model: CLIP, directory: str | os.PathLike, format: str = "vclip") -> Path:
    """Write ``model`` as a directory: ``format="vclip"`` (config.json + model.safetensors, vclip
    layout) or ``"hf"`` (a transformers ``CLIPModel`` directory). Each file is written atomically."""
    from safetensors.torch import save_file

    directory = Path(directory)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if format == "vclip":
        meta = {"format": VCLIP_FORMAT, "clip": model.config.to_dict()}
    elif format == "hf":
        sd = convert.vclip_to_hf(sd)
        meta = convert.config_to_hf(model.config)
    else:
        raise ValueError(f"format must be 'vclip' or 'hf', got {format!r}")
    write_files_atomically(directory, {
        "model.safetensors": lambda p: save_file(sd, p, metadata={"format": "pt"}),
        "config.json": lambda p: Path(p).write_text(json.dumps(meta, indent=2)),
    })
    return directory
