"""Prompt templates. A config's ``model.templates`` lists templates ("{}" is the class name) or
names a preset with ``@name`` (e.g. ``["@actionclip16"]``)."""

from __future__ import annotations

from vclip.errors import ConfigError

PRESETS: dict[str, tuple[str, ...]] = {
    # X-CLIP and ViFi-CLIP's zero-shot evaluation: the bare class name
    "bare": ("{}",),
    # ViFi-CLIP's fine-tuning text (CTX_INIT)
    "vificlip": ("a photo of a {}.",),
    # the class-name prompt of OST's official code ("a video of a person {}.", without "doing")
    "video": ("a video of a person {}.",),
    # ViLT-CLIP's scenario template (Implementation Details and Eq. 12's paragraph)
    "vilt": ("a video of a person doing {}.",),
    # ActionCLIP's 16 templates (sallymmx/ActionCLIP utils/Text_Prompt.py), the usual ensemble
    "actionclip16": (
        "a photo of action {}", "a picture of action {}", "Human action of {}", "{}, an action",
        "{} this is an action", "{}, a video of action", "Playing action of {}", "{}",
        "Playing a kind of action, {}", "Doing a kind of action, {}", "Look, the human is {}",
        "Can you recognize the action of {}?", "Video classification of {}", "A video of {}",
        "The man is {}", "The woman is {}",
    ),
}


def resolve_templates(entries: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for e in entries:
        if e.startswith("@"):
            if e[1:] not in PRESETS:
                raise ConfigError(f"model.templates: unknown preset {e!r} (known: {', '.join('@' + k for k in PRESETS)})")
            out.extend(PRESETS[e[1:]])
        else:
            out.append(e)
    if not out:
        raise ConfigError("model.templates: empty")
    return tuple(out)
