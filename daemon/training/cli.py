"""``leukoscope train|evaluate|export`` subcommands (torch imported lazily, only when needed).

Wire into the main parser with ``add_training_commands(subparsers)``; every command sets
``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from daemon.training.train import ClassifierConfig

DEFAULT_DATA = "../shared/data/all-taleqani"
DEFAULT_NEGATIVES = "../shared/data/pbc-normal"


def _train(args: argparse.Namespace) -> int:
    from daemon.training import train as T  # torch

    common = dict(
        data=args.data,
        epochs=args.epochs,
        seed=args.seed,
        block_size=args.block_size,
        threads=args.threads,
        device=args.device,
        limit_fields=args.limit_fields,
    )
    if args.model == "segmenter":
        cfg = T.SegmenterConfig(
            out=args.out or "runs/segmenter", base=args.base, patch=args.patch,
            negatives=args.negatives, **common
        )
        if args.epochs is None:
            cfg.epochs = 10
        T.train_segmenter(cfg)
    else:
        cfg_c = T.ClassifierConfig(
            out=args.out or "runs/classifier",
            width=args.width,
            size=args.size,
            colour_norm=args.colour_norm,
            negatives=args.negatives,
            init=args.init,
            extra_crops=args.extra_crops,
            stain_mix=args.stain_mix,
            augment=_augment_overrides(args.augment),
            time_budget_s=args.time_budget,
            train_seed=args.train_seed,
            workers=args.workers,
            **common,
        )
        if args.epochs is None:
            cfg_c.epochs = 18
        if args.lr is not None:
            cfg_c.lr = args.lr
        T.train_classifier(cfg_c)
    return 0


def _daemon_crops(args: argparse.Namespace) -> int:
    import numpy as np

    from daemon.inference.analyzer import Analyzer
    from daemon.inference.sessions import Classifier, Segmenter
    from daemon.training.daemon_crops import daemon_crops
    from daemon.training.data import load_splits, read_rgb

    train = load_splits(args.data, args.block_size, args.split_seed,
                        cache_dir=Path("runs/cache"))["train"]
    models = Path(args.models)
    analyzer = Analyzer(Segmenter(models / "segmenter.json", "cpu", 0),
                        Classifier(models / "classifier.json", "cpu", 0))
    images = [read_rgb(record.image) for record in train["records"]]
    crops, labels = daemon_crops(analyzer, images, train["masks"], train["labels"],
                                 args.views, args.seed)
    np.savez_compressed(args.out, crops=crops, labels=labels)
    print(json.dumps({"fields": len(images), "views": args.views, "crops": len(crops),
                      "per_class": np.bincount(labels, minlength=4).tolist(), "out": args.out}))
    return 0


def _augment_overrides(items: list[str]) -> dict:
    """``["blur_p=0.5", "resample=0.35,1"]`` -> ``{"blur_p": 0.5, "resample": (0.35, 1.0)}``;
    keys are ``AugmentParams`` fields (a wrong key or value is an error naming it)."""
    import dataclasses  # noqa: PLC0415

    from daemon.training.augment import AugmentParams  # noqa: PLC0415 - torch

    fields = {f.name: f for f in dataclasses.fields(AugmentParams)}
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--augment {item!r}: expected KEY=VALUE with KEY one of "
                             f"{', '.join(fields)}")
        default = getattr(AugmentParams(), key)
        if isinstance(default, bool):
            if value not in {"0", "1", "true", "false"}:
                raise SystemExit(f"--augment {key}: expected true or false, got {value!r}")
            out[key] = value in {"1", "true"}
            continue
        try:
            parts = [float(v) for v in value.split(",")]
        except ValueError:
            raise SystemExit(f"--augment {key}: {value!r} is not a number") from None
        if isinstance(default, tuple):
            if len(parts) != 2:
                raise SystemExit(f"--augment {key}: expected LO,HI, got {value!r}")
            out[key] = tuple(type(d)(v) for d, v in zip(default, parts, strict=True))
        elif len(parts) == 1:
            out[key] = type(default)(parts[0])
        else:
            raise SystemExit(f"--augment {key}: expected one number, got {value!r}")
    return out


def _pack(args: argparse.Namespace) -> int:
    from daemon.training.pack import write_pack  # noqa: PLC0415

    report = write_pack(Path(args.data), Path(args.out), args.block_size, args.seed,
                        Path(args.negatives) if args.negatives else None,
                        cache_dir=Path("runs/cache"))
    print(json.dumps(report, indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from daemon.training.export import VERSION, export_checkpoint  # torch

    out = Path(args.out)
    for checkpoint in args.checkpoints:
        report = export_checkpoint(Path(checkpoint), out, fp16=not args.no_fp16,
                                   version=args.version or VERSION)
        print(json.dumps(report, indent=2))
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    import shutil

    from daemon.training.ensemble import build_ensemble  # onnx only

    out = Path(args.out)
    report = build_ensemble([Path(m) for m in args.members], out, args.version,
                            fp16=not args.no_fp16, resample=args.resample_smaller)
    if args.segmenter:  # a complete models folder, ready for evaluate or the daemon
        for name in ("segmenter.onnx", "segmenter_fp16.onnx", "segmenter.json"):
            if (Path(args.segmenter) / name).exists():
                shutil.copy2(Path(args.segmenter) / name, out / name)
    print(json.dumps(report, indent=2))
    return 0


def _derived_from(args: argparse.Namespace, command: str, augment: dict | None = None
                  ) -> ClassifierConfig:
    """What ``refit-head`` and ``recalibrate-bn`` start from: the exported classifier's
    manifest (one line if it is missing or broken) and the training crops it was made on, as
    a ``train.ClassifierConfig``. Sets the CPU threads asked for."""
    from daemon.domain.manifest import load_manifest
    from daemon.training.train import ClassifierConfig

    try:
        source = load_manifest(Path(args.models) / "classifier.json")
    except ValueError as exc:  # ManifestError: missing, malformed or not matching its file
        raise SystemExit(f"leukoscope {command}: {exc}") from None
    crop = source.crop
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return ClassifierConfig(
        data=args.data, negatives=args.negatives, size=source.input.size[0],
        margin=crop.margin, min_side_px=crop.min_side_px, seed=args.split_seed,
        block_size=args.block_size, augment=augment or {},
        # the crops the network saw: a Reinhard-trained one saw them normalised
        colour_norm=getattr(source, "colour_norm", None) or "none")


def _with_segmenter(models: Path, out: Path, report: dict) -> int:
    """Copy the segmenter beside the derived classifier (a complete models folder, ready for
    ``evaluate``) and print the report."""
    import shutil

    for name in ("segmenter.onnx", "segmenter_fp16.onnx", "segmenter.json"):
        if (models / name).exists():
            shutil.copy2(models / name, out / name)
    print(json.dumps(report, indent=2))
    return 0


def _derived_arguments(parser: argparse.ArgumentParser, made: str) -> None:
    """The arguments of a command that derives a classifier from an exported one."""
    parser.add_argument("models", help="folder with classifier.onnx + .json (and the segmenter)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--version", required=True, help=f"the {made} classifier's version")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--negatives", default=DEFAULT_NEGATIVES, help="'' for none")
    parser.add_argument("--split-seed", type=int, default=0, help="the block split's seed")
    parser.add_argument("--block-size", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: default)")
    parser.add_argument("--no-fp16", action="store_true")


def _refit_head(args: argparse.Namespace) -> int:
    from daemon.training.head import RefitConfig, refit_heads  # torch

    train_cfg = _derived_from(args, "refit-head")
    cfg = RefitConfig(views=args.views, stain_mix=args.stain_mix,
                      augment=_augment_overrides(args.augment), l2=args.l2,
                      max_iter=args.max_iter, seed=args.seed)
    try:
        report = refit_heads(Path(args.models), Path(args.out), args.version, train_cfg, cfg,
                             fp16=not args.no_fp16, threads=args.threads)
    except ValueError as exc:  # no head in the graph, or past the memory bound
        raise SystemExit(f"leukoscope refit-head: {exc}") from None
    return _with_segmenter(Path(args.models), Path(args.out), report)


def _recalibrate_bn(args: argparse.Namespace) -> int:
    from daemon.training.batchnorm import recalibrate_models  # torch

    train_cfg = _derived_from(args, "recalibrate-bn", _augment_overrides(args.augment))
    if not 0.0 <= args.augmented_share <= 1.0:
        raise SystemExit(f"leukoscope recalibrate-bn: --augmented-share {args.augmented_share}:"
                         " a share, 0 to 1")
    try:
        report = recalibrate_models(Path(args.models), Path(args.out), args.version, train_cfg,
                                    fp16=not args.no_fp16, augmented_share=args.augmented_share)
    except ValueError as exc:  # not a MobileNetV2 graph this project builds
        raise SystemExit(f"leukoscope recalibrate-bn: {exc}") from None
    return _with_segmenter(Path(args.models), Path(args.out), report)


def _evaluate(args: argparse.Namespace) -> int:
    from daemon.training.evaluate import evaluate  # onnxruntime only

    report = evaluate(
        args.data,
        Path(args.models),
        args.block_size,
        args.seed,
        Path(args.json) if args.json else None,
        update_manifests=not args.no_update,
        threads=args.threads,
        negatives=args.negatives or None,
        shifts=not args.no_shifts,
        views_min_gain_fields=args.views_min_gain_fields,
        val_shifts=args.val_shifts,
    )
    field = report["classifier_test_field"]
    seg = report["segmenter_test"]
    print(
        f"segmenter test: Dice {seg['dice_pooled']:.4f} IoU {seg['iou_pooled']:.4f} "
        f"count MAE {seg['cell_count']['mae']:.3f}"
    )
    print(
        f"classifier test (fields, end to end): accuracy {field['accuracy']:.4f} "
        f"macro-F1 {field['macro_f1']:.4f} macro AUC {field['macro_auc_ovr']:.4f} "
        f"no-call {field['no_call']} review {field['review_share']:.3f}"
    )
    cal = report["calibration"]
    print(f"calibration: T {cal['temperature']} test ECE {cal['test_ece_before']:.4f} -> "
          f"{cal['test_ece_after']:.4f}")
    print(f"views of each crop: {report['views_search']['chosen']} (validation field accuracy "
          f"{report['views_search']['val_field_accuracy']})")
    colour = report["colour_confound"]
    print(f"colour-only baseline (no cell looked at): test field accuracy "
          f"{colour['accuracy']:.4f} (majority class {colour['majority_class_rate']:.4f})")
    for name, row in report.get("val_shift_suite", {}).items():
        print(f"validation shift {name:18s} accuracy {row['accuracy']:.4f} "
              f"review {row['review_share']:.3f}")
    for name, row in report.get("shift_suite", {}).items():
        print(f"shift {name:18s} accuracy {row['accuracy']:.4f} review {row['review_share']:.3f} "
              f"factor {row['median_factor']:.3f}")
    if "foreign_normal_test" in report:
        for mode in ("one_rig", "each_alone"):
            for cls, row in report["foreign_normal_test"][mode]["per_class"].items():
                print(f"normal cells ({mode}) {cls:13s} n {row['n']:3d} leukemic {row['leukemic']:3d}"
                      f" not flagged {row['leukemic_not_flagged']:3d} unidentified "
                      f"{row['unidentified']:3d} benign {row['benign']:3d}")
            total = report["foreign_normal_test"][mode]["total"]
            print(f"normal cells ({mode}) all: leukemic {total['leukemic_share']:.3f}, "
                  f"leukemic without review {total['leukemic_not_flagged_share']:.3f}")
    return 0


def _rig_suite(args: argparse.Namespace) -> int:
    from daemon.training.evaluate import run_rig_suite  # onnxruntime only

    report = run_rig_suite(args.data, Path(args.models), args.split, stain=not args.no_stain,
                           into=Path(args.into) if args.into else None,
                           update_manifest=args.update, block_size=args.block_size,
                           seed=args.seed, threads=args.threads, foreign=args.foreign or None,
                           order=args.order)
    if "foreign_normal_one_rig" in report:
        total = report["foreign_normal_one_rig"]["total"]
        print(f"normal cells of another lab as one rig, calibration "
              f"{'on' if report['stain_calibration'] else 'off'}: leukemic "
              f"{total['leukemic_share']:.3f}, leukemic without review "
              f"{total['leukemic_not_flagged_share']:.3f}")
        return 0
    print(f"stain reference {report['stain_reference_deg']} deg, calibration "
          f"{'on' if report['stain_calibration'] else 'off'}, {args.split} blocks, "
          "each row one rig")
    for name, row in report["rows"].items():
        print(f"{args.split} rig {name:18s} accuracy {row['accuracy']:.4f} review "
              f"{row['review_share']:.3f} stain offset {row['rig_stain_offset_deg']} "
              f"turned {row['turned_share']:.2f}")
    return 0


def _evaluate_decode(args: argparse.Namespace) -> int:
    from daemon.settings import load_settings
    from daemon.training.decode_check import check_reduced_decode

    report = check_reduced_decode(load_settings(Path(args.config) if args.config else None),
                                  args.data, args.fields, args.enlargement, args.quality)
    print(json.dumps(report, indent=2))
    return 0


def add_training_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train``, ``evaluate`` and ``export`` on an argparse subparsers object."""
    train = subparsers.add_parser("train", help="train the segmenter or the classifier (torch)")
    train.add_argument("model", choices=["segmenter", "classifier"])
    train.add_argument("--data", default=DEFAULT_DATA, help="data set root (original/, segmented/)")
    train.add_argument("--out", default=None, help="run directory (default runs/<model>)")
    train.add_argument("--epochs", type=int, default=None, help="segmenter 10, classifier 18")
    train.add_argument("--seed", type=int, default=0, help="the block split's seed (and, "
                       "unless --train-seed, the weights' and augmentation's)")
    train.add_argument("--train-seed", type=int, default=None,
                       help="classifier: seed of the weights and augmentation only, for a "
                            "second run of one recipe on the same split")
    train.add_argument("--block-size", type=int, default=40, help="file numbers per split block")
    train.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    train.add_argument("--workers", type=int, default=0,
                       help="classifier: DataLoader worker processes preparing the training "
                            "batches (each batch seeded from seed, epoch and batch, so any "
                            "number >= 1 gives the same batches; 0: inline, as before)")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda")
    train.add_argument("--limit-fields", type=int, default=0, help="smoke runs: fields per split")
    train.add_argument("--base", type=int, default=8, help="segmenter: U-Net base channels")
    train.add_argument("--patch", type=int, default=128, help="segmenter: training patch px")
    train.add_argument("--width", type=float, default=0.5, help="classifier: MobileNetV2 width")
    train.add_argument("--size", type=int, default=64, help="classifier: crop side px")
    train.add_argument("--colour-norm", default="none", choices=["none", "reinhard"])
    train.add_argument("--init", default="", help="classifier: fine-tune from this checkpoint")
    train.add_argument("--extra-crops", default="",
                       help="classifier: an .npz of crops and labels added to the training "
                            "crops (leukoscope daemon-crops)")
    train.add_argument("--stain-mix", type=float, default=0.0,
                       help="classifier: share of crops given a random training field's stain "
                            "(breaks the data set's class-linked stain batches; 0: off)")
    train.add_argument("--lr", type=float, default=None, help="classifier: peak learning rate")
    train.add_argument("--augment", action="append", default=[], metavar="KEY=VALUE",
                       help="classifier: override one augmentation range (AugmentParams field, "
                            "e.g. blur_p=0.5 or resample=0.35,1); repeatable")
    train.add_argument("--time-budget", type=float, default=0.0, metavar="SECONDS",
                       help="classifier: fit the schedule to the epochs that fit in this many "
                            "seconds (timed on the first epochs; at most --epochs; 0: off)")
    train.add_argument("--negatives", default=DEFAULT_NEGATIVES,
                       help="foreign normal cells <class>/<file>: their train part teaches the "
                            "classifier 'unidentified' and the segmenter their red cells "
                            "('' for none)")
    train.set_defaults(func=_train)

    crops = subparsers.add_parser(
        "daemon-crops", help="training crops cut by the daemon's own path (scale, smoothing, "
        "rescale, gain, segmenter) from the train blocks under random acquisition shifts")
    crops.add_argument("--data", default=DEFAULT_DATA)
    crops.add_argument("--models", default="models", help="the segmenter and crop geometry")
    crops.add_argument("--views", type=int, default=3, help="shifted copies per field")
    crops.add_argument("--seed", type=int, default=0, help="the shifts' seed")
    crops.add_argument("--block-size", type=int, default=40)
    crops.add_argument("--split-seed", type=int, default=0)
    crops.add_argument("--out", required=True, help=".npz with crops and labels")
    crops.set_defaults(func=_daemon_crops)

    pack = subparsers.add_parser(
        "train-pack", help="the train and val blocks (and foreign cells' train and val parts) "
        "in a folder to carry to a GPU machine; train there with --data PACK "
        "--negatives PACK/negatives")
    pack.add_argument("--data", default=DEFAULT_DATA)
    pack.add_argument("--negatives", default=DEFAULT_NEGATIVES, help="'' for none")
    pack.add_argument("--out", default="runs/pack")
    pack.add_argument("--block-size", type=int, default=40)
    pack.add_argument("--seed", type=int, default=0)
    pack.set_defaults(func=_pack)

    export = subparsers.add_parser("export", help="export checkpoints to ONNX + fp16 + manifest")
    export.add_argument("checkpoints", nargs="+", help="runs/<model>/best.pt files")
    export.add_argument("--out", default="models")
    export.add_argument("--no-fp16", action="store_true")
    export.add_argument("--version", default=None,
                        help="model version in the manifest (results carry it): new weights, "
                             "new version (default: the exporter's VERSION)")
    export.set_defaults(func=_export)

    ensemble = subparsers.add_parser(
        "ensemble", help="average exported classifiers (folders with classifier.onnx + .json) "
        "into one classifier.onnx: softmax of the mean logit")
    ensemble.add_argument("members", nargs="+", help="model folders, two or more")
    ensemble.add_argument("--out", required=True)
    ensemble.add_argument("--version", required=True,
                          help="the ensemble's model version (results carry it)")
    ensemble.add_argument("--segmenter", default="",
                          help="copy this folder's segmenter beside it (a complete models folder)")
    ensemble.add_argument("--no-fp16", action="store_true")
    ensemble.add_argument("--resample-smaller", action="store_true",
                          help="allow members trained on smaller crops: the first member's input "
                          "size is the ensemble's, and each smaller member is fed the crop "
                          "area-resampled to its own size inside the graph")
    ensemble.set_defaults(func=_ensemble)

    refit = subparsers.add_parser(
        "refit-head", help="refit only the last layer of an exported classifier (each network's "
        "head of an ensemble) on augmented views of its training crops; backbone unchanged")
    _derived_arguments(refit, "refitted")
    refit.add_argument("--views", type=int, default=8, help="augmented views of each crop")
    refit.add_argument("--stain-mix", type=float, default=0.0,
                       help="share of views given a random training field's stain")
    refit.add_argument("--augment", action="append", default=[], metavar="KEY=VALUE",
                       help="override one augmentation range of the training's; repeatable")
    refit.add_argument("--l2", type=float, default=1e-3,
                       help="pull towards the shipped head: (l2 / 2) ||W - W0||^2")
    refit.add_argument("--max-iter", type=int, default=200, help="L-BFGS iterations")
    refit.add_argument("--seed", type=int, default=0, help="the views' seed")
    refit.set_defaults(func=_refit_head)

    recal = subparsers.add_parser(
        "recalibrate-bn", help="re-estimate the BatchNorm statistics of an exported classifier "
        "(each network of an ensemble) on its plain training crops; weights otherwise unchanged")
    _derived_arguments(recal, "recalibrated")
    recal.add_argument("--augment", action="append", default=[], metavar="KEY=VALUE",
                       help="the training's augmentation overrides, if it had any; repeatable")
    recal.add_argument("--augmented-share", type=float, default=0.0,
                       help="share of augmented crops in the batches the new statistics are "
                       "taken on (0: plain crops only)")
    recal.set_defaults(func=_recalibrate_bn)

    evaluate = subparsers.add_parser(
        "evaluate", help="run the exported pipeline on the test blocks; fill manifest metrics"
    )
    evaluate.add_argument("--data", default=DEFAULT_DATA)
    evaluate.add_argument("--models", default="models")
    evaluate.add_argument("--block-size", type=int, default=40)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--json", default="models/eval.json", help="full report ('' for none)")
    evaluate.add_argument("--no-update", action="store_true", help="leave the manifests alone")
    evaluate.add_argument("--threads", type=int, default=0)
    evaluate.add_argument("--negatives", default=DEFAULT_NEGATIVES,
                          help="foreign normal cells <class>/<file>: val part joins calibration, "
                               "held-out part is reported ('' for none)")
    evaluate.add_argument("--no-shifts", action="store_true", help="skip the shift suite")
    evaluate.add_argument("--val-shifts", action="store_true",
                          help="also run the shift suite on the validation blocks (for "
                               "choosing between trained models without the test blocks)")
    evaluate.add_argument("--views-min-gain-fields", type=int, default=2,
                          help="validation fields the mirror view must win by (0: any gain)")
    evaluate.set_defaults(func=_evaluate)

    rigs = subparsers.add_parser(
        "rig-suite", help="the shift suite with each row's fields as one rig's frames (running "
        "scale and stain calibration build up), on the val or test blocks")
    rigs.add_argument("--data", default=DEFAULT_DATA)
    rigs.add_argument("--models", default="models")
    rigs.add_argument("--split", choices=("val", "test"), default="val")
    rigs.add_argument("--no-stain", action="store_true", help="stain calibration off")
    rigs.add_argument("--into", default="", help="add the rows to this eval.json")
    rigs.add_argument("--foreign", default="",
                      help="instead of the suite: the held-out normal cells of another lab in "
                           "this folder (e.g. ../shared/data/pbc-normal) as one rig")
    rigs.add_argument("--update", action="store_true",
                      help="write the stain reference into the segmenter manifest")
    rigs.add_argument("--order", choices=("slides", "file"), default="slides",
                      help="slides: the split's slides in a seeded random order, as a rig "
                           "meets specimens (default); file: sorted by class, as before")
    rigs.add_argument("--block-size", type=int, default=40)
    rigs.add_argument("--seed", type=int, default=0)
    rigs.add_argument("--threads", type=int, default=0)
    rigs.set_defaults(func=_rig_suite)

    check = subparsers.add_parser(
        "evaluate-decode", help="full vs reduced JPEG decode on enlarged test fields: field "
        "classes, QC verdicts, decode time (the worker's workers.reduced_decode)")
    check.add_argument("--config", default=None, help="config.yaml (models, QC thresholds)")
    check.add_argument("--data", default=DEFAULT_DATA)
    check.add_argument("--fields", type=int, default=200, help="test fields, evenly spread")
    check.add_argument("--enlargement", type=float, default=3.0)
    check.add_argument("--quality", type=int, default=90, help="JPEG quality of the frames")
    check.set_defaults(func=_evaluate_decode)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m daemon.training.cli train segmenter ...``."""
    parser = argparse.ArgumentParser(prog="leukoscope-training")
    add_training_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
