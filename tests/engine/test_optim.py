import io
import math

import pytest
import torch
from torch import nn

from vclip.engine.optim import WarmupCosine, build_optimizer, param_groups, timm_cosine_lr, warmup_cosine_lr
from vclip.errors import ConfigError


class Toy(nn.Module):
    """Names shaped like CLIP + a method's new modules."""

    def __init__(self):
        super().__init__()
        self.visual = nn.Module()
        self.visual.conv1 = nn.Conv2d(3, 4, 2, bias=False)                       # clip / decay
        self.visual.class_embedding = nn.Parameter(torch.zeros(4))                # clip / no (1-D)
        self.visual.positional_embedding = nn.Parameter(torch.zeros(5, 4))        # clip / no (name)
        self.visual.ln_pre = nn.LayerNorm(4)                                      # clip / no, no
        self.visual.proj = nn.Parameter(torch.zeros(4, 4))                        # clip / decay
        self.text_frozen = nn.Linear(4, 4)                                        # frozen: left out
        self.text_frozen.requires_grad_(False)
        self.logit_scale = nn.Parameter(torch.ones([]))                           # clip / no (0-d)
        self.mit = nn.Linear(4, 4)                                                # new / decay, no
        self.prompts = nn.Module()
        self.prompts.position_embedding = nn.Parameter(torch.zeros(3, 4))         # new / no (name)
        self.prompts.mlp = nn.Linear(4, 4, bias=True)                             # new / decay, no


def group_of(name):
    return "new" if name.startswith(("mit.", "prompts.")) else "clip"


NEW = dict(group_of=group_of, lr_mults={"new": 10.0})  # X-CLIP's two levels


def groups_by_name(groups):
    return {g["name"]: g for g in groups}


def test_param_groups_split():
    m = Toy()
    groups = param_groups(m, lr=1e-3, weight_decay=0.05, **NEW)
    g = groups_by_name(groups)
    assert [x["name"] for x in groups] == ["clip/decay", "clip/no_decay", "new/decay", "new/no_decay"]
    assert sorted(g["clip/decay"]["param_names"]) == ["visual.conv1.weight", "visual.proj"]
    assert sorted(g["clip/no_decay"]["param_names"]) == sorted([
        "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre.weight",
        "visual.ln_pre.bias", "logit_scale"])
    assert sorted(g["new/decay"]["param_names"]) == ["mit.weight", "prompts.mlp.weight"]
    assert sorted(g["new/no_decay"]["param_names"]) == sorted([
        "mit.bias", "prompts.position_embedding", "prompts.mlp.bias"])
    for name, grp in g.items():
        new = name.startswith("new")
        assert grp["lr"] == pytest.approx(1e-2 if new else 1e-3)
        assert grp["lr_mult"] == (10.0 if new else 1.0)
        assert grp["weight_decay"] == (0.05 if name.endswith("/decay") else 0.0)
        assert len(grp["params"]) == len(grp["param_names"])
    # every trainable parameter exactly once, frozen ones never
    ids = [id(p) for grp in groups for p in grp["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in m.parameters() if p.requires_grad}


def test_wrapper_prefixes_are_ignored():
    wrapper = nn.Module()
    wrapper.module = nn.Module()
    wrapper.module._orig_mod = Toy()
    a = groups_by_name(param_groups(wrapper, lr=1.0, weight_decay=0.1, **NEW))
    b = groups_by_name(param_groups(Toy(), lr=1.0, weight_decay=0.1, **NEW))
    assert {k: sorted(g["param_names"]) for k, g in a.items()} == {k: sorted(g["param_names"]) for k, g in b.items()}


def test_empty_groups_omitted_and_default_all_clip():
    m = nn.Linear(3, 3, bias=False)
    groups = param_groups(m, lr=1.0, weight_decay=0.1)
    assert [g["name"] for g in groups] == ["clip/decay"]


def test_build_optimizer():
    m = Toy()
    opt = build_optimizer(m, lr=8e-6, weight_decay=0.001, **NEW)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-8
    assert not opt.defaults.get("fused")  # CPU parameters: not fused
    assert [g["name"] for g in opt.param_groups] == ["clip/decay", "clip/no_decay", "new/decay", "new/no_decay"]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([8e-6, 8e-6, 8e-5, 8e-5])
    # one step, then the state dict is loadable weights-only
    loss = sum(p.sum() for p in m.parameters() if p.requires_grad)
    loss.backward()
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    opt2 = build_optimizer(Toy(), lr=8e-6, weight_decay=0.001, **NEW)
    opt2.load_state_dict(torch.load(buf, weights_only=True))


def test_build_optimizer_errors():
    m = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer(m, lr=1e-3, weight_decay=0.0)
    with pytest.raises(ConfigError, match="weight_decay"):
        param_groups(nn.Linear(2, 2), lr=1e-3, weight_decay=-1)


LR, MIN, TOTAL, WARM = 1e-3, 1e-5, 100, 10


def make_sched(lr=LR):
    m = Toy()
    opt = build_optimizer(m, lr=lr, weight_decay=0.0, **NEW)
    return m, opt, WarmupCosine(opt, total_steps=TOTAL, warmup_steps=WARM, min_lr=MIN)


def lrs_at(opt, sched, step):
    while sched.last_epoch < step:
        opt.step()
        sched.step()
    return [g["lr"] for g in opt.param_groups]  # [clip, clip, new, new]


@pytest.mark.parametrize("step, clip_lr, new_lr", [
    (0, 0.0, 0.0),                                          # warm-up starts at 0
    (5, 5e-4, 5e-3),                                        # half-way through warm-up
    (10, 1e-3, 1e-2),                                       # end of warm-up: the base LRs
    (55, 1e-5 + 0.5 * (1e-3 - 1e-5), 1e-5 + 0.5 * (1e-2 - 1e-5)),   # half-way through the cosine
    (100, 1e-5, 1e-5),                                      # end: the absolute floor for both
    (130, 1e-5, 1e-5),                                      # past the end: stays at the floor
])
def test_warmup_cosine_values(step, clip_lr, new_lr):
    _, opt, sched = make_sched()
    got = lrs_at(opt, sched, step)
    assert got == pytest.approx([clip_lr, clip_lr, new_lr, new_lr], rel=1e-12, abs=1e-15)
    assert sched.get_last_lr() == pytest.approx(got)


def test_warmup_cosine_quarter_point():
    # warm-up 10, cosine over 4 steps: step 11 is a quarter of the way, min + (base - min)(1 + cos(pi/4))/2
    kw = dict(base_lr=LR, total_steps=14, warmup_steps=10, min_lr=MIN)
    assert warmup_cosine_lr(10, **kw) == LR
    assert warmup_cosine_lr(11, **kw) == pytest.approx(MIN + (LR - MIN) * (1 + math.sqrt(0.5)) / 2, rel=1e-12)
    assert warmup_cosine_lr(13, **kw) == pytest.approx(MIN + (LR - MIN) * (1 - math.sqrt(0.5)) / 2, rel=1e-12)
    assert warmup_cosine_lr(14, **kw) == MIN


def test_no_warmup_starts_at_base():
    m = Toy()
    opt = build_optimizer(m, lr=LR, weight_decay=0.0)
    WarmupCosine(opt, total_steps=10, warmup_steps=0, min_lr=0.0)
    assert all(g["lr"] == LR for g in opt.param_groups)


def test_monotone_and_continuous():
    lrs = [warmup_cosine_lr(s, base_lr=1.0, total_steps=50, warmup_steps=7, min_lr=0.01) for s in range(60)]
    assert all(b >= a for a, b in zip(lrs[:7], lrs[1:8]))        # rising through warm-up
    assert all(b <= a for a, b in zip(lrs[7:], lrs[8:]))         # falling afterwards
    assert max(lrs) == 1.0 and lrs[-1] == 0.01


def test_scheduler_state_roundtrip_any_order():
    m, opt, sched = make_sched()
    lrs_at(opt, sched, 37)
    want_now = [g["lr"] for g in opt.param_groups]
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)

    # restore: optimizer state first, then a fresh scheduler, then its state
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    _, opt2, _ = make_sched(lr=LR)
    opt2.load_state_dict(state["opt"])
    sched2 = WarmupCosine(opt2, total_steps=TOTAL, warmup_steps=WARM, min_lr=MIN)
    sched2.load_state_dict(state["sched"])
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx(want_now)
    # ... and the scheduler first, then the optimizer
    _, opt3, sched3 = make_sched(lr=LR)
    sched3.load_state_dict(state["sched"])
    opt3.load_state_dict(state["opt"])
    assert [g["lr"] for g in opt3.param_groups] == pytest.approx(want_now)
    # both continue exactly like the original
    for o, s in ((opt, sched), (opt2, sched2), (opt3, sched3)):
        o.step()
        s.step()
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([g["lr"] for g in opt.param_groups])
    assert [g["lr"] for g in opt3.param_groups] == pytest.approx([g["lr"] for g in opt.param_groups])
    assert sched2.last_epoch == sched.last_epoch == 38


@pytest.mark.parametrize("kwargs, match", [
    ({"total_steps": 0, "warmup_steps": 0, "min_lr": 0.0}, "total_steps"),
    ({"total_steps": 10, "warmup_steps": 10, "min_lr": 0.0}, "warmup_steps"),
    ({"total_steps": 10, "warmup_steps": -1, "min_lr": 0.0}, "warmup_steps"),
    ({"total_steps": 10, "warmup_steps": 1, "min_lr": -1.0}, "min_lr"),
])
def test_scheduler_errors(kwargs, match):
    opt = build_optimizer(nn.Linear(2, 2), lr=1e-3, weight_decay=0.0)
    with pytest.raises(ConfigError, match=match):
        WarmupCosine(opt, **kwargs)


# ------------------------------------------------------------------------- timm_cosine (official)

def timm_cosine_reference(t, *, base, t_initial, warmup_t, lr_min, warmup_lr_init=0.0, cycle_limit=1):
    """timm's ``CosineLRScheduler._get_lr(t)`` as the official X-CLIP/OST code configures it
    (``t_in_epochs=False``, ``cycle_mul=1``, ``decay_rate=1``, no ``warmup_prefix``), written out by
    hand: a linear warm-up from ``warmup_lr_init`` over ``warmup_t`` steps, otherwise the cycle's
    cosine with ``t`` counted from 0 (warm-up included), ``lr_min`` after the last cycle."""
    if t < warmup_t:
        return warmup_lr_init + t * (base - warmup_lr_init) / warmup_t
    i = t // t_initial                      # the cycle (one cycle: 0 until t_initial)
    t_curr = t - t_initial * i
    if i >= cycle_limit:
        return lr_min
    return lr_min + 0.5 * (base - lr_min) * (1 + math.cos(math.pi * t_curr / t_initial))


def test_timm_cosine_follows_timms_formula_for_every_step_and_group():
    m = Toy()
    opt = build_optimizer(m, lr=LR, weight_decay=0.0, **NEW)
    sched = WarmupCosine(opt, total_steps=TOTAL, warmup_steps=WARM, min_lr=MIN, schedule="timm_cosine")
    for step in range(TOTAL + 5):
        want = [timm_cosine_reference(step, base=b, t_initial=TOTAL, warmup_t=WARM, lr_min=MIN)
                for b in (LR, LR, 10 * LR, 10 * LR)]
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(want, rel=1e-12, abs=1e-15), step
        opt.step()
        sched.step()
    # not the other shape: after the warm-up the cosine has already run for WARM steps
    assert timm_cosine_lr(WARM, base_lr=LR, total_steps=TOTAL, warmup_steps=WARM, min_lr=MIN) < 0.98 * LR
    assert warmup_cosine_lr(WARM, base_lr=LR, total_steps=TOTAL, warmup_steps=WARM, min_lr=MIN) == LR


def test_official_30_epoch_run_figures():
    """X-CLIP/OST: 30 epochs, 5 warm-up epochs, lr_min = LR/100. timm: 0.934·LR when the warm-up
    ends and 0.505·LR at epoch 15; the cosine-after-warm-up shape: LR and 0.658·LR."""
    per_epoch = 100
    kw = {"base_lr": 1.0, "total_steps": 30 * per_epoch, "warmup_steps": 5 * per_epoch, "min_lr": 0.01}

    def timm(epoch):
        return timm_cosine_lr(int(epoch * per_epoch), **kw)

    def after(epoch):
        return warmup_cosine_lr(int(epoch * per_epoch), **kw)

    assert timm(5) == pytest.approx(0.934, abs=5e-4)
    assert timm(15) == pytest.approx(0.505, abs=5e-4)
    assert after(5) == 1.0 and after(15) == pytest.approx(0.658, abs=5e-4)
    assert timm(2.5) == after(2.5) == pytest.approx(0.5)        # the same linear warm-up from 0
    assert timm(30) == after(30) == 0.01
    # ~18 % more LR on average over the run with the cosine after the warm-up
    steps = range(30 * per_epoch)
    ratio = sum(warmup_cosine_lr(s, **kw) for s in steps) / sum(timm_cosine_lr(s, **kw) for s in steps)
    assert 1.15 < ratio < 1.21


def test_without_warmup_both_schedules_agree():
    kw = {"base_lr": 1.0, "total_steps": 40, "warmup_steps": 0, "min_lr": 0.01}
    assert [timm_cosine_lr(s, **kw) for s in range(45)] == pytest.approx([warmup_cosine_lr(s, **kw) for s in range(45)])


def test_timm_cosine_resume_is_exact():
    """The schedule travels in the scheduler state: a fresh scheduler (configured either way)
    loading it continues with timm's LRs; a state saved before the option existed (no
    ``schedule``) keeps the configured one."""
    def fresh(schedule):
        o = build_optimizer(Toy(), lr=LR, weight_decay=0.0, **NEW)
        return o, WarmupCosine(o, total_steps=TOTAL, warmup_steps=WARM, min_lr=MIN, schedule=schedule)

    opt, sched = fresh("timm_cosine")
    lrs_at(opt, sched, 23)
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert state["schedule"] == "timm_cosine"
    opt2, sched2 = fresh("timm_cosine")
    sched2.load_state_dict(state)
    for o, s in ((opt, sched), (opt2, sched2)):
        for _ in range(3):
            o.step()
            s.step()
    want = [timm_cosine_reference(26, base=b, t_initial=TOTAL, warmup_t=WARM, lr_min=MIN)
            for b in (LR, LR, 10 * LR, 10 * LR)]
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups] == pytest.approx(want)
    old = {k: v for k, v in state.items() if k != "schedule"}
    opt3, sched3 = fresh("cosine_after_warmup")
    sched3.load_state_dict(old)
    assert sched3.schedule == "cosine_after_warmup"
    assert opt3.param_groups[0]["lr"] == pytest.approx(
        warmup_cosine_lr(23, base_lr=LR, total_steps=TOTAL, warmup_steps=WARM, min_lr=MIN))


def test_unknown_schedule_is_refused():
    opt = build_optimizer(nn.Linear(2, 2), lr=1e-3, weight_decay=0.0)
    with pytest.raises(ConfigError, match=r"train\.schedule: 'cosine'"):
        WarmupCosine(opt, total_steps=10, warmup_steps=1, min_lr=0.0, schedule="cosine")


# --- found by mutation testing (benchmarks/mutation.sh vclip/engine/optim.py) ---------------------

class ToyMethod(Toy):
    """What build_method_optimizer reads from a VideoMethod: its groups, LR multipliers and decay rule."""

    parameter_groups = ("new",)

    def parameter_group(self, name):
        return group_of(name)

    def lr_mults(self, lr_mult_new, overrides):
        return {"new": lr_mult_new, **overrides}

    def decays(self, name, param):  # a rule of its own: only the MIT decays
        return name.startswith("mit.")


def test_build_method_optimizer_uses_the_methods_groups_and_the_train_config():
    from types import SimpleNamespace

    from vclip.engine.optim import build_method_optimizer

    cfg = SimpleNamespace(lr=2e-5, weight_decay=0.05, betas=[0.8, 0.9], eps=1e-6, lr_mult_new=4.0, lr_mults={})
    opt = build_method_optimizer(ToyMethod(), cfg, fused=False)
    g = groups_by_name(opt.param_groups)
    assert list(g) == ["clip/no_decay", "new/decay", "new/no_decay"]  # clip decays nowhere: the method's rule
    assert g["new/decay"]["param_names"] == ["mit.weight", "mit.bias"]
    assert [x["lr"] for x in opt.param_groups] == pytest.approx([2e-5, 8e-5, 8e-5])
    assert g["new/decay"]["weight_decay"] == 0.05 and g["new/no_decay"]["weight_decay"] == 0.0
    assert opt.defaults["betas"] == (0.8, 0.9) and opt.defaults["eps"] == 1e-6 and opt.defaults["fused"] is False
    cfg.lr_mults = {"new": 2.5}
    assert [x["lr"] for x in build_method_optimizer(ToyMethod(), cfg).param_groups] == pytest.approx([2e-5, 5e-5, 5e-5])
    cfg.lr_mult_new = 0
    with pytest.raises(ConfigError, match=r"^optimizer lr_mult_new must be a finite number > 0, got 0$"):
        build_method_optimizer(ToyMethod(), cfg)


def test_number_checks_bounds_and_messages():
    m = Toy()
    assert param_groups(m, lr=0.0, weight_decay=0.0, group_of=group_of, lr_mults={"new": 0.5})[-1]["lr_mult"] == 0.5
    with pytest.raises(ConfigError, match=r"^optimizer lr must be a finite number >= 0, got -1$"):
        param_groups(m, lr=-1, weight_decay=0.0)
    with pytest.raises(ConfigError, match=r"^optimizer weight_decay must be a finite number >= 0, got nan$"):
        param_groups(m, lr=1.0, weight_decay=float("nan"))
    with pytest.raises(ConfigError, match=r"^optimizer LR multiplier of group 'new' must be a finite number > 0, "
                                          r"got 0$"):
        param_groups(m, lr=1.0, weight_decay=0.0, lr_mults={"new": 0})


def test_clip_group_first_and_groups_with_only_no_decay():
    class NewFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.prompts = nn.Module()
            self.prompts.scale = nn.Parameter(torch.ones(3))  # new / no_decay only
            self.visual = nn.Linear(2, 2, bias=False)          # clip / decay only

    groups = param_groups(NewFirst(), lr=1.0, weight_decay=0.1, group_of=group_of)
    assert [g["name"] for g in groups] == ["clip/decay", "new/no_decay"]


def test_build_optimizer_passes_its_settings_to_adamw():
    opt = build_optimizer(Toy(), lr=3e-4, weight_decay=0.2, eps=1e-5, betas=(0.5, 0.6))
    assert opt.defaults["lr"] == 3e-4 and opt.defaults["weight_decay"] == 0.2 and opt.defaults["eps"] == 1e-5
    assert opt.defaults["betas"] == (0.5, 0.6)
    assert opt.defaults["fused"] is None  # CPU parameters: torch's default kernel, not an explicit choice
    assert build_optimizer(Toy(), lr=3e-4, weight_decay=0.2, fused=True).defaults["fused"] is True
    with pytest.raises(ConfigError, match=r"^no trainable parameters: every parameter has requires_grad=False "
                                          r"\(are both towers frozen and the method adds no new modules\?\)$"):
        build_optimizer(nn.Linear(2, 2).requires_grad_(False), lr=1e-3, weight_decay=0.0)


def test_timm_warmup_from_a_nonzero_initial_lr():
    # warmup_lr_init + step · (base − init) / warmup = 0.2 + 2 · 0.8 / 4
    assert timm_cosine_lr(2, base_lr=1.0, total_steps=10, warmup_steps=4, min_lr=0.0,
                          warmup_lr_init=0.2) == pytest.approx(0.6)


def test_schedule_edges_and_messages():
    opt = build_optimizer(Toy(), lr=1.0, weight_decay=0.0)
    WarmupCosine(opt, total_steps=1, warmup_steps=0, min_lr=0.0)  # a one-step run is valid
    with pytest.raises(ConfigError, match=r"^train.schedule: 'linear' is not one of 'cosine_after_warmup', "
                                          r"'timm_cosine'$"):
        WarmupCosine(opt, total_steps=5, warmup_steps=0, min_lr=0.0, schedule="linear")
    sched = WarmupCosine(opt, total_steps=10, warmup_steps=2, min_lr=0.0)
    state = sched.state_dict()
    state["schedule"] = "linear"
    with pytest.raises(ConfigError, match=r"^scheduler state has an unknown schedule 'linear' "
                                          r"\(known: cosine_after_warmup, timm_cosine\)$"):
        WarmupCosine(opt, total_steps=10, warmup_steps=2, min_lr=0.0).load_state_dict(state)
    other = build_optimizer(nn.Linear(2, 2, bias=False), lr=1.0, weight_decay=0.0)
    with pytest.raises(ConfigError, match=r"^scheduler state has 2 parameter groups, the optimizer 1 \(the trainable "
                                          r"parameters changed since the checkpoint\)$"):
        WarmupCosine(other, total_steps=10, warmup_steps=2, min_lr=0.0).load_state_dict(sched.state_dict())
    for _ in range(3):
        opt.step()
        sched.step()
    fresh = WarmupCosine(build_optimizer(Toy(), lr=1.0, weight_decay=0.0), total_steps=10, warmup_steps=2, min_lr=0.0)
    fresh.load_state_dict(sched.state_dict())
    assert fresh.get_last_lr() == sched.get_last_lr() == pytest.approx([0.5 * (1 + math.cos(math.pi / 8))] * 2)


def test_group_order_custom_no_decay_and_decay_rules_that_read_the_parameter():
    from types import SimpleNamespace

    from vclip.engine.optim import build_method_optimizer

    class TwoGroups(ToyMethod):
        parameter_groups = ("prompt", "new")  # declared order, not the order of appearance (mit first)

        def parameter_group(self, name):
            return "prompt" if name.startswith("prompts.") else group_of(name)

        def decays(self, name, param):
            return param.ndim >= 2  # reads the parameter, not only its name

    cfg = SimpleNamespace(lr=1.0, weight_decay=0.1, betas=[0.9, 0.98], eps=1e-8, lr_mult_new=10.0, lr_mults={})
    names = [g["name"] for g in build_method_optimizer(TwoGroups(), cfg).param_groups]
    assert names == ["clip/decay", "clip/no_decay", "prompt/decay", "prompt/no_decay", "new/decay", "new/no_decay"]
    g = groups_by_name(build_method_optimizer(TwoGroups(), cfg).param_groups)
    assert g["prompt/decay"]["param_names"] == ["prompts.position_embedding", "prompts.mlp.weight"]
    # a custom no_decay list replaces the default keywords (positional_embedding decays, proj does not)
    g = groups_by_name(param_groups(Toy(), lr=1.0, weight_decay=0.1, no_decay=("proj",)))
    assert "visual.positional_embedding" in g["clip/decay"]["param_names"]
    assert "visual.proj" in g["clip/no_decay"]["param_names"]


def test_warmup_as_long_as_the_run_is_refused():
    opt = build_optimizer(Toy(), lr=1.0, weight_decay=0.0)
    with pytest.raises(ConfigError, match=r"^schedule warmup_steps \(1\) must be smaller than total_steps \(1\); "
                                          r"shorten the warm-up or train longer$"):
        WarmupCosine(opt, total_steps=1, warmup_steps=1, min_lr=0.0)
