"""``vclip run PROTOCOL`` and ``vclip report RUN_DIR...``."""

from __future__ import annotations

import shlex
import sys

from pathlib import Path

from vclip.errors import ConfigError


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def register(subparsers) -> None:
    from vclip.protocols.runner import CLI_NAMES

    p = subparsers.add_parser(
        "run", help="run an evaluation protocol end to end (train, evaluate every test set, aggregate)",
        description="Run a protocol: fully-supervised, few-shot, zero-shot or base-to-novel (docs/protocols.md).")
    p.add_argument("protocol", metavar="PROTOCOL", help="one of: " + ", ".join(CLI_NAMES))
    p.add_argument("--data", required=True, metavar="SPEC", help="dataset spec YAML (roots, labels, split files)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (rerun to resume)")
    p.add_argument("--config", "-c", action="append", default=[], metavar="FILE",
                   help="base run config (method, backbone, training); repeatable")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. model.method=vificlip")
    p.add_argument("--datasets", help="comma-separated dataset names of the spec (default: the protocol's)")
    p.add_argument("--shots", default="2,4,8,16", help="few-shot K values (default 2,4,8,16); base-to-novel: 16")
    p.add_argument("--seeds", help="seeds (few-shot default 1; base-to-novel and K600 draws default 1,2,3)")
    p.add_argument("--views", help="CLIPSxCROPS list (fully-supervised default 1x1,4x3; others 1x1)")
    p.add_argument("--label-norm", default="", help="class-name normalisation: camelcase,underscores,placeholders,lower")
    p.add_argument("--eval-only", action="store_true", help="no training: evaluate --checkpoint or model.pretrained")
    p.add_argument("--checkpoint", help="evaluate this vclip checkpoint (implies no training)")
    p.add_argument("--init-checkpoint", help="start training from this checkpoint's CLIP weights "
                                             "(e.g. the K400-fine-tuned few-shot variant)")
    p.add_argument("--checkpoint-tag", default="last", choices=["last", "best"],
                   help="which checkpoint of a training sub-run to evaluate (default last)")
    p.add_argument("--monitor", action="store_true", help="also evaluate the test set during training")
    p.add_argument("--train-dataset", default="k400", help="zero-shot: the training dataset (default k400)")
    p.add_argument("--k600-classes", type=int, default=160, help="zero-shot: classes per K600 draw (default 160)")
    p.add_argument("--label", help="row label in tables (default: the method)")
    p.set_defaults(handler=_run)

    r = subparsers.add_parser("report", help="put protocol runs side by side (markdown tables)")
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    r.add_argument("--out", help="also write the tables to this file")
    r.set_defaults(handler=_report)

    from vclip.protocols.suite import register as register_suite

    register_suite(subparsers)


def _run(args) -> int:
    from vclip.errors import TrainingInterrupted

    try:
        return _run_protocol(args)
    except TrainingInterrupted as e:  # every finished sub-run is kept; the stopped one resumes
        again = " ".join(shlex.quote(a) for a in sys.argv) if sys.argv and sys.argv[0] else "the same vclip run command"
        raise TrainingInterrupted(
            f"{e.args[0].split('; resume with:')[0]}; the finished sub-runs are kept and the stopped one resumes "
            f"from its checkpoint: run the same command again ({again})",
            signum=e.signum, exit_code=e.exit_code, resume_command=again, checkpoint=e.checkpoint) from None


def _run_protocol(args) -> int:
    from vclip.protocols import runner as R

    protocol = R.protocol_name(args.protocol)
    run = R.ProtocolRun(
        run_dir=Path(args.out), data=R.load_data_spec(args.data), config_files=args.config,
        overrides=args.overrides, label_norm=_names(args.label_norm) or [], checkpoint=args.checkpoint,
        init_checkpoint=args.init_checkpoint, eval_only=args.eval_only, checkpoint_tag=args.checkpoint_tag,
        monitor=args.monitor, label=args.label)
    ds = _names(args.datasets)
    seeds = _ints(args.seeds) if args.seeds else None
    views = R.parse_views(args.views) if args.views else None
    if protocol == "fully_supervised":
        res = R.run_fully_supervised(run, ds or ["k400"], views or [(1, 1), (4, 3)])
    elif protocol == "few_shot":
        res = R.run_few_shot(run, ds or [d for d in ("hmdb51", "ucf101") if d in run.data] or list(run.data),
                             _ints(args.shots), seeds or [1], (views or [(1, 1)])[0])
    elif protocol == "zero_shot":
        res = R.run_zero_shot(run, args.train_dataset,
                              ds or [d for d in ("hmdb51", "ucf101", "k600") if d in run.data],
                              seeds or [1, 2, 3], args.k600_classes, (views or [(1, 1)])[0])
    else:
        shots = _ints(args.shots)
        res = R.run_base_to_novel(
            run, ds or [d for d in ("k400", "hmdb51", "ucf101", "ssv2") if d in run.data], seeds or [1, 2, 3],
            shots[0] if args.shots != "2,4,8,16" else 16, (views or [(1, 1)])[0])
    print(res["table"], end="")
    print(f"results in {run.run_dir}/results.json, table in {run.run_dir}/table.md")
    return 0


def _report(args) -> int:
    from vclip.protocols.aggregate import load_result, markdown_table
    from vclip.io import atomic_write_text

    try:
        results = [load_result(d) for d in args.run_dirs]
    except (OSError, ValueError) as e:
        raise ConfigError(str(e)) from None
    table = markdown_table(results)
    print(table, end="")
    if args.out:
        atomic_write_text(args.out, table)
    return 0
