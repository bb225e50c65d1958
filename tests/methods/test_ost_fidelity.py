"""OST's training as the official code: the KL loss over the global batch (all-gather with gradient,
2 processes = 1 process), no gradient clipping, weight decay on every parameter, the loss weights
(official sum, the paper's ½), and the official K600 per-split descriptor files."""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

import pytest
import torch

from vclip.backbone import CLIP, get_config
from vclip.config import TrainConfig, load_config
from vclip.engine.optim import build_method_optimizer
from vclip.engine.trainer import weighted_loss
from vclip.errors import AnnotationError, ConfigError
from vclip.methods.base import Vocabulary
from vclip.methods.ost import OST

REPO = Path(__file__).parents[2]
NAMES = ("a", "b", "c")
VOCAB = Vocabulary(NAMES, descriptors=[(f"{c} thing", f"{c} place", f"{c} step one", f"{c} step two")
                                       for c in NAMES])
LABELS = torch.tensor([0, 2, 2, 1])          # rank 0: [0, 2], rank 1: [2, 1] — a positive across ranks


def _tiny_ost(**opts) -> OST:
    torch.manual_seed(0)
    return OST(CLIP(get_config("tiny")), num_frames=4, options=OST.parse_options({"num_descriptors": 2, **opts}))


def _video() -> torch.Tensor:
    return torch.randn(4, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loss_and_grads(model, video, y):
    out = model(video, VOCAB, y)
    loss = weighted_loss(out.losses, OST.loss_weights)
    loss.backward()
    grads = {n.removeprefix("module."): p.grad.detach().clone() for n, p in model.named_parameters()
             if p.grad is not None}
    return loss.detach(), {k: v.detach() for k, v in out.losses.items()}, grads


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from vclip.engine import distributed as D

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    D.init_distributed("cpu", timeout_s=60)
    try:
        # the gather itself: unequal rows per rank, every rank the same loss Σ w ⊙ gathered
        x = torch.full((rank + 1, 2), float(rank + 1), requires_grad=True)
        gathered = D.all_gather_with_grad(x)
        w = torch.arange(gathered.numel(), dtype=torch.float32).view_as(gathered)
        (gathered * w).sum().backward()
        # OST under DDP: 2 videos per process
        ddp = torch.nn.parallel.DistributedDataParallel(_tiny_ost().train())
        sl = slice(2 * rank, 2 * rank + 2)
        loss, terms, grads = _loss_and_grads(ddp, _video()[sl], LABELS[sl])
        torch.save({"gathered": gathered.detach(), "x_grad": x.grad, "loss": loss, "terms": terms, "grads": grads},
                   os.path.join(out_dir, f"r{rank}.pt"))
        del ddp  # before the process group it uses (D.cleanup)
    finally:
        D.cleanup()


def test_kl_loss_over_two_processes_equals_one_process_on_the_global_batch(tmp_path):
    """2 processes × 2 videos = 1 process × 4 videos: the same loss value on every process (the
    B × B KL over the gathered batch) and, after DDP's gradient averaging, the same gradients for
    both towers and logit_scale (the gather's backward sums the ranks' gradients)."""
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.set_num_threads(1)
    ref_loss, ref_terms, ref = _loss_and_grads(_tiny_ost().train(), _video(), LABELS)
    local_loss = weighted_loss(_tiny_ost().train()(_video()[:2], VOCAB, LABELS[:2]).losses, OST.loss_weights)
    assert abs(float(local_loss.detach()) - float(ref_loss)) > 1e-2     # the local batch is another loss
    assert any(n.startswith("clip.visual.") for n in ref) and any(n.startswith("clip.text.") for n in ref)
    assert "clip.logit_scale" in ref
    for rank in range(2):
        got = torch.load(tmp_path / f"r{rank}.pt", weights_only=True)
        # all_gather_with_grad: rows of both ranks in rank order; gradient = Σ over ranks of w
        assert torch.equal(got["gathered"], torch.tensor([[1.0, 1.0], [2.0, 2.0], [2.0, 2.0]]))
        w = torch.arange(6, dtype=torch.float32).view(3, 2)
        assert torch.equal(got["x_grad"], 2 * (w[:1] if rank == 0 else w[1:]))
        torch.testing.assert_close(got["loss"], ref_loss, rtol=1e-6, atol=1e-6)
        for k in ref_terms:
            torch.testing.assert_close(got["terms"][k], ref_terms[k], rtol=1e-6, atol=1e-6)
        assert set(got["grads"]) == set(ref)
        for n in ref:
            # rounding of another summation order only (1e-5 of the largest entry); a gradient
            # scaled by 1/world_size (the official backward under DDP averaging) is off by half
            torch.testing.assert_close(got["grads"][n], ref[n], rtol=0, atol=1e-5 * float(ref[n].abs().max()),
                                       msg=n)


# ------------------------------------------------------------------ configs: clipping, decay, loss weights
OST_CONFIGS = sorted((REPO / "configs" / "ost").glob("*.yaml"))


@pytest.mark.parametrize("path", OST_CONFIGS, ids=lambda p: p.name)
def test_official_configs_clip_nothing_and_decay_every_parameter(path):
    cfg = load_config([str(path)])
    assert cfg.train.clip_grad is None
    assert cfg.model.options["decay_all_parameters"] is True
    assert cfg.train.loss_weights == {"kl_v2t": 1.0, "kl_t2v": 1.0}


def _decay_of(method) -> dict[str, float]:
    opt = build_method_optimizer(method, TrainConfig(lr=1e-4, weight_decay=0.001, lr_mult_new=1.0))
    return {n: g["weight_decay"] for g in opt.param_groups for n in g["param_names"]}


def test_decay_all_parameters_puts_every_parameter_in_a_decay_group():
    m = _tiny_ost(decay_all_parameters=True)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    decay = _decay_of(m)
    assert set(decay) == trainable and all(w == 0.001 for w in decay.values())
    # without the option: vclip's rule (biases, LayerNorms, embeddings, logit_scale undecayed)
    plain = _decay_of(_tiny_ost())
    assert set(plain) == trainable
    off = {n for n, w in plain.items() if w == 0.0}
    for n in ("clip.logit_scale", "clip.visual.positional_embedding", "clip.visual.class_embedding",
              "clip.text.positional_embedding"):
        assert n in off, n
    assert any(n.endswith(".bias") for n in off) and any(".ln_" in n or "ln_" in n for n in off)
    assert all(plain[n] == 0.001 for n in trainable - off)
    assert all(m.get_parameter(n).ndim >= 2 for n in trainable - off)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from vclip.data.synthetic import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthConfig(size=(32, 32), frames=4, videos_per_class=4, val_fraction=0.25, seed=0))
    return out


def _official(path: Path, lists) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({str(i): per for i, per in enumerate(lists)}))


def test_paper_loss_weight_halves_the_logged_loss(synth, tmp_path):
    """The official sum of the two KL directions, and the paper's average through
    ``train.loss_weights={kl_v2t: 0.5, kl_t2v: 0.5}``: the logged loss halves, the terms do not."""
    from vclip.data.annotations import read_label_csv
    from vclip.engine.trainer import train

    names = read_label_csv(synth / "labels.csv")
    for kind in ("spatio", "temporal"):
        _official(tmp_path / f"{kind}.json", [[f"{c} {kind} {i}" for i in range(2)] for c in names])
    common = [f"output_dir={tmp_path / 'runs'}", "device=cpu", "model.arch=tiny", "model.pretrained=null",
              f"model.options.spatial_descriptors={tmp_path / 'spatio.json'}",
              f"model.options.temporal_descriptors={tmp_path / 'temporal.json'}", "model.options.num_descriptors=2",
              f"data.root={synth}", f"data.train_list={synth / 'train.txt'}", f"data.val_list={synth / 'val.txt'}",
              f"data.labels={synth / 'labels.csv'}", "data.num_frames=4", "data.image_size=32",
              "data.batch_size=6", "data.num_workers=0", "train.epochs=1", "train.max_steps=1",
              "train.warmup_epochs=0", "train.accum_steps=1", "train.lr=1e-5", "train.precision=fp32", "train.log_every=1",
              "eval.confusion_png=false"]
    first = {}
    for name, extra in (("sum", []), ("paper", ["train.loss_weights={kl_v2t: 0.5, kl_t2v: 0.5}"])):
        cfg = load_config([str(REPO / "configs/ost/k400_zeroshot_train.yaml")], common + [f"name={name}"] + extra)
        train(cfg)
        rows = [json.loads(x) for x in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        first[name] = next(r for r in rows if "loss" in r)
    s, p = first["sum"], first["paper"]
    assert s["kl_v2t"] == pytest.approx(p["kl_v2t"], rel=1e-6) and s["kl_t2v"] == pytest.approx(p["kl_t2v"], rel=1e-6)
    assert s["loss"] == pytest.approx(s["kl_v2t"] + s["kl_t2v"], rel=1e-6)
    assert p["loss"] == pytest.approx(0.5 * s["loss"], rel=1e-6)


# ------------------------------------------------------------------ the official K600 per-split descriptor files
def _labels_csv(path: Path, names) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "name"])
        w.writerows(enumerate(names))


def test_official_k600_split_descriptor_files_load_with_the_shipped_config(tmp_path, monkeypatch):
    """The official layout ``descriptors/k600/split{k}/{spatio,temporal}_4_descriptors.json`` (keys
    "0".."159" = rows of ``ZS_split{k}_K600.csv``) through configs/ost/zeroshot_eval_k600.yaml; the
    600-class files with ``descriptor_labels`` for any 160-class draw, matched by name."""
    from vclip.data.annotations import read_label_csv
    from vclip.methods import make_vocabulary

    monkeypatch.chdir(tmp_path)
    k600 = [f"k600 class {i:03d}" for i in range(600)]
    split1 = k600[440:]                                                  # 160 classes, K600 order
    _labels_csv(tmp_path / "data/k600/ZS_split1_K600.csv", split1)
    _labels_csv(tmp_path / "data/k600/kinetics_600_labels.csv", k600)
    for kind in ("spatio", "temporal"):
        _official(tmp_path / f"descriptors/k600/split1/{kind}_4_descriptors.json",
                  [[f"{c} {kind} {i}" for i in range(4)] for c in split1])
        _official(tmp_path / f"descriptors/k600/{kind}_descriptors/4_descriptors.json",
                  [[f"{c} {kind} {i} (all)" for i in range(4)] for c in k600])
    cfg = load_config([str(REPO / "configs/ost/zeroshot_eval_k600.yaml")],
                      ["model.options.wise_checkpoint=null", "model.arch=tiny"])
    names = read_label_csv(cfg.data.labels)
    assert len(names) == 160
    vocab = make_vocabulary(cfg, names)
    for k in (0, 77, 159):
        c = split1[k]
        assert vocab.descriptors[k] == tuple(f"{c} {kind} {i}" for kind in ("spatio", "temporal") for i in range(4))

    # the per-split file with a label list of another length: one line naming the file and the fix
    with pytest.raises(AnnotationError, match=r"split1/spatio_4_descriptors\.json: no descriptors for class 160 "
                                              r".*160 classes, the label file has 600.*descriptor_labels"):
        make_vocabulary(cfg, k600)
    # another draw (a vclip zero-shot split: other classes, other order) with the 600-class files
    draw = [k600[5], k600[599], k600[100]]
    over = ["model.options.wise_checkpoint=null", "model.arch=tiny",
            "model.options.spatial_descriptors=descriptors/k600/spatio_descriptors/4_descriptors.json",
            "model.options.temporal_descriptors=descriptors/k600/temporal_descriptors/4_descriptors.json",
            "model.options.descriptor_labels=data/k600/kinetics_600_labels.csv"]
    cfg600 = load_config([str(REPO / "configs/ost/zeroshot_eval_k600.yaml")], over)
    vocab = make_vocabulary(cfg600, draw)
    assert vocab.descriptors[1] == tuple(f"{k600[599]} {kind} {i} (all)" for kind in ("spatio", "temporal")
                                         for i in range(4))
    # the per-split files, indexed by their split list, for a subset in another order
    cfg_split = load_config([str(REPO / "configs/ost/zeroshot_eval_k600.yaml")],
                            over[:2] + ["model.options.descriptor_labels=data/k600/ZS_split1_K600.csv"])
    vocab = make_vocabulary(cfg_split, [split1[9], split1[0]])
    assert vocab.descriptors[0][0] == f"{split1[9]} spatio 0" and vocab.descriptors[1][4] == f"{split1[0]} temporal 0"
    with pytest.raises(AnnotationError, match=r"class 'k600 class 000' is not in the label list the file is indexed by"):
        make_vocabulary(cfg_split, [k600[0]])
    cfg_split.model.options["descriptor_labels"] = "data/k600/nope.csv"
    with pytest.raises(ConfigError, match=r"model\.options\.descriptor_labels: .*nope\.csv"):
        make_vocabulary(cfg_split, [split1[0]])
