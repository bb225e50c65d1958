"""MoTED through `vclip run zero_shot`: one config whose description options list one file per
dataset; every sub-run scores its classes with the descriptions of its own dataset's file."""

from __future__ import annotations

from vclip.data.annotations import read_label_csv
from vclip.methods.moted import MoTED
from vclip.protocols.runner import ProtocolRun, load_data_spec, run_zero_shot
from vclip.text.descriptors import DescriptorSet, write_descriptors


def test_zero_shot_with_one_description_file_per_dataset(tmp_path, synth_protocol_data, tiny_config, monkeypatch):
    files = {}
    for ds in ("k400", "k600", "hmdb51", "ucf101"):
        names = read_label_csv(synth_protocol_data / "ann" / f"{ds}_labels.csv")
        for kind, n in (("conceptual", 1), ("discriminative", 2)):
            path = tmp_path / f"{ds}_{kind}.json"
            write_descriptors(path, DescriptorSet(f"moted-{kind}", names,
                                                  [[f"{ds} {kind} {i} of {c}" for i in range(n)] for c in names]))
            files.setdefault(kind, []).append(str(path))
    seen: list[tuple] = []
    real = MoTED.encode_vocabulary
    monkeypatch.setattr(MoTED, "encode_vocabulary", lambda self, v: seen.append(v.descriptors) or real(self, v))
    over = ["model.method=moted", "model.freeze_text=true", "model.freeze_vision=true",
            "model.options.motion_width=32", "model.options.pooling_layers=1", "model.options.num_discriminative=2",
            f"model.options.conceptual_descriptions={files['conceptual']}",
            f"model.options.discriminative_descriptions={files['discriminative']}"]
    run = ProtocolRun(run_dir=tmp_path / "zs", data=load_data_spec(synth_protocol_data / "spec.yaml"),
                      config_files=[str(tiny_config)], overrides=over)
    res = run_zero_shot(run, "k400", ["hmdb51", "ucf101", "k600"], k600_seeds=[1], k600_classes=3)
    assert set(res["summary"]) == {"hmdb51", "ucf101", "k600"}
    first = {d[0][0].split(" ")[0] for d in seen}
    # each dataset's own file, although K600's new classes are HMDB's too: the first file covering
    # the whole vocabulary wins
    assert first == {"k400", "hmdb51", "ucf101", "k600"}
    hmdb = next(d for d in seen if d[0][0].startswith("hmdb51"))
    assert all(len(per) == 3 and per[1].startswith("hmdb51 discriminative 0") for per in hmdb)
