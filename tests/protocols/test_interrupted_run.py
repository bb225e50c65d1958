"""A protocol run stopped by SIGINT/SIGTERM (the trainer raised TrainingInterrupted after saving):
`vclip run` exits with the shell's code and says to run the same command again."""

from __future__ import annotations

import signal

from vclip.cli import main
from vclip.errors import TrainingInterrupted


def test_vclip_run_reports_an_interrupted_sub_run(tmp_path, synth_protocol_data, tiny_config, monkeypatch, capsys):
    import vclip.engine.trainer as trainer

    def stopped(cfg, *a, **k):
        raise TrainingInterrupted(
            f"stopped by SIGTERM after step 1 (epoch 1, micro-batch 1 of 2); checkpoint saved in {cfg.run_dir}/"
            f"checkpoints/last; resume with: vclip train -c {cfg.run_dir}/config.yaml --resume auto",
            signum=int(signal.SIGTERM), exit_code=143, resume_command="x", checkpoint=str(cfg.run_dir))

    monkeypatch.setattr(trainer, "train", stopped)
    code = main(["run", "few-shot", "--data", str(synth_protocol_data / "spec.yaml"), "--out", str(tmp_path / "fs"),
                 "-c", str(tiny_config), "--datasets", "hmdb51", "--shots", "2", "--seeds", "1"])
    err = capsys.readouterr().err
    assert code == 143
    assert "stopped by SIGTERM after step 1" in err and "run the same command again" in err
    assert "vclip train -c" not in err                      # not the single-run resume command
