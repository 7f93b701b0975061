"""The command line: ``python -m deeplab_edu <command>`` (or ``deeplab-edu <command>``).

Commands: ``download``, ``make-toy-data``, ``train``, ``evaluate``, ``crf-search``, and
``grade`` (a class's graded exercises, :mod:`deeplab_edu.grading`). Every option defaults to the
paper's value (full mode) or to the fast-mode value (``--fast``, the default on every machine, a
GPU's too: full mode is only ever asked for); ``--help`` on each command shows both.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from deeplab_edu import runtime
from deeplab_edu.checkpoint import write_results
from deeplab_edu.crf.kernels import NORMALIZATIONS, CRFParams
from deeplab_edu.crf_search import SearchConfig, load_best, search
from deeplab_edu.data import ensure_toy_voc, make_toy_voc, open_dataset
from deeplab_edu.data.download import prepare_voc
from deeplab_edu.data.toy import ToyConfig
from deeplab_edu.data.voc import PairedImages
from deeplab_edu.evaluate import EvalConfig, evaluate
from deeplab_edu.exercises import EXERCISES
from deeplab_edu.grading import Limits, grade, gradebook_paths, summary, write_gradebook
from deeplab_edu.models import VARIANTS, vgg16_imagenet_state_dict
from deeplab_edu.models.deeplab import DeepLab
from deeplab_edu.outputs import refuse_foreign, refuse_input
from deeplab_edu.runs import load_trained
from deeplab_edu.train import TrainConfig, train

PACKAGE = Path(__file__).resolve().parent  # tracebacks from here are the package's own
Subparsers = argparse._SubParsersAction  # what add_subparsers returns (argparse has no public name)


class UsageError(Exception):
    """A mistake of the user's, reported as one line without a traceback."""


def _mode_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--fast",
        dest="fast",
        action="store_true",
        default=None,
        help="laptop-sized values (the default, on a GPU too)",
    )
    group.add_argument(
        "--full",
        dest="fast",
        action="store_false",
        help="the paper's values (only when asked: VOC, a GPU)",
    )


def _both(name: str, full: runtime.ModeConfig, fast: runtime.ModeConfig) -> str:
    return f"{name} (paper: {getattr(full, name)}; --fast: {getattr(fast, name)})"


def _add_train(sub: Subparsers) -> None:
    full, fast = TrainConfig(), TrainConfig.fast()
    p = sub.add_parser(
        "train",
        help="train a DeepLab network (paper sections 3.1 and 5)",
        description="Train with the paper's recipe. Several GPUs: "
        "torchrun --nproc_per_node=N -m deeplab_edu train ...",
    )
    _mode_flags(p)
    p.add_argument("--variant", choices=VARIANTS, help=_both("variant", full, fast))
    p.add_argument("--width", type=float, help=_both("width", full, fast))
    p.add_argument(
        "--msc",
        action="store_true",
        default=None,
        help="DeepLab-MSc, the paper's second stage: add the multi-scale branches to "
        "the network of --init (a trained DeepLab's checkpoint.pt) and train them "
        "and fc8, the rest frozen",
    )
    p.add_argument("--init", help=_both("init", full, fast) + " or a checkpoint file")
    p.add_argument(
        "--dataset",
        help=_both("dataset", full, fast) + " or a folder of your own "
        "(images/ + masks/ + classes.txt, or VOC's layout)",
    )
    p.add_argument(
        "--split", help="training split (paper: train_aug; --fast and a folder of your own: train)"
    )
    p.add_argument(
        "--crop",
        type=int,
        help="training crop side (paper: the variant's released "
        f"crop, 321, 306 for DeepLab; --fast: {fast.crop})",
    )
    for name, kind in (
        ("iterations", int),
        ("batch_size", int),
        ("lr", float),
        ("lr_step", int),
        ("seed", int),
        ("checkpoint_every", int),
        ("num_workers", int),
    ):
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=_both(name, full, fast))
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, logs)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _eval_options(
    p: argparse.ArgumentParser, full: runtime.ModeConfig, fast: runtime.ModeConfig
) -> None:
    _mode_flags(p)
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint.pt from train")
    p.add_argument("--variant", choices=VARIANTS, help="the variant you expect (checked)")
    p.add_argument("--split", default="val", help="split of the run's data set (default: val)")
    p.add_argument("--pad-to", type=int, help=_both("pad_to", full, fast) + "; 0 = native size")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _crf_options(p: argparse.ArgumentParser, params: CRFParams) -> None:
    """One option per CRFParams field except the searched ones' grids (see _add_search)."""
    for name, value in params.to_dict().items():
        kind = type(value)
        extra: dict[str, Any] = {"choices": NORMALIZATIONS} if name == "normalization" else {}
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=None,
            **extra,
            help=f"CRF {name} (default: {value})",
        )


def _add_evaluate(sub: Subparsers) -> None:
    full, fast = EvalConfig(), EvalConfig.fast()
    p = sub.add_parser("evaluate", help="score a checkpoint without and with the CRF")
    _eval_options(p, full, fast)
    p.add_argument("--max-images", type=int, help="score only the first N images")
    p.add_argument("--no-crf", action="store_true", help="skip the CRF")
    p.add_argument(
        "--crf-from",
        type=Path,
        help="the JSON written by crf-search: use the parameters it chose, and score "
        "the images it did not tune on separately too",
    )
    _crf_options(p, CRFParams())
    p.add_argument("--out", type=Path, required=True, help="the results JSON to write")
    p.add_argument(
        "--force", action="store_true", help="replace --out even if evaluate did not write it"
    )


def _add_search(sub: Subparsers) -> None:
    full, fast = SearchConfig(), SearchConfig.fast()
    p = sub.add_parser("crf-search", help="cross-validate w1, theta_alpha, theta_beta")
    _eval_options(p, full, fast)
    p.add_argument("--num-images", type=int, help=_both("num_images", full, fast))
    p.add_argument(
        "--seed",
        type=int,
        help="which images tune the CRF (drawn at random): " + _both("seed", full, fast),
    )
    for name in ("w1", "theta_alpha", "theta_beta"):
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=float,
            nargs="+",
            help="coarse grid: " + _both(name, full, fast),
        )
    p.add_argument(
        "--normalization",
        choices=NORMALIZATIONS,
        help=f"the kernel normalisation of every trial (default: {full.base.normalization})",
    )
    p.add_argument("--max-recentres", type=int, help=_both("max_recentres", full, fast))
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="JSON of the trials and the best parameters (resumed if it exists)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="python -m deeplab_edu",
        description="DeepLab v1 reproduced: data, training, evaluation, CRF search.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    p = sub.add_parser(
        "download",
        help="fetch VOC 2012 + SBD, or the VGG-16 weights",
        description="voc: VOC 2012 and SBD, checksummed, and the train_aug list "
        "built from them; vgg16: torchvision's IMAGENET1K_V1 weights.",
    )
    p.add_argument("what", choices=("voc", "vgg16", "all"), help="what to download")
    p.add_argument("--root", type=Path, help="where to put it (default: the data root)")
    p = sub.add_parser("make-toy-data", help="generate the VOC-format teaching set")
    p.add_argument("--out", type=Path, help="root folder (default: the data root's toy-voc)")
    p.add_argument("--n-train", type=int, default=None, help="training images")
    p.add_argument("--n-val", type=int, default=None, help="validation images")
    p.add_argument("--size", type=int, default=None, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    _add_train(sub)
    _add_evaluate(sub)
    _add_search(sub)
    p = sub.add_parser(
        "grade",
        help="grade students' submissions: one process each, a gradebook",
        description="Grades each submission (a .py file, a student's notebook, or a folder "
        "of them) in a process of its own, under a time limit and a memory cap: the checker of "
        "every exercise whose function it defines ("
        + ", ".join(e.function for e in EXERCISES.values())
        + "). Prints each report and a summary per exercise; with --out, writes the "
        "gradebook (CSV and JSON). Exit status 0 if every submission passed every exercise, "
        "1 otherwise.",
    )
    p.add_argument("paths", nargs="+", type=Path, help="submission files or folders of them")
    p.add_argument("--out", type=Path, help="folder for gradebook.csv and gradebook.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing gradebook")
    p.add_argument(
        "--time-limit", type=float, default=Limits.seconds, help="seconds per submission"
    )
    p.add_argument(
        "--memory-mb", type=int, default=Limits.memory_mb, help="data memory per submission"
    )
    return parser


def _train(args: argparse.Namespace) -> None:
    base = TrainConfig.for_mode(args.fast)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    changes = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    config = dataclasses.replace(base, **changes)
    try:
        config.validate()
    except ValueError as error:
        raise UsageError(str(error)) from error
    train(config, args.out, resume=args.resume, progress=not args.no_progress)
    if dist.is_initialized():  # launched by torchrun: leave the process group cleanly
        dist.destroy_process_group()
    print(f"trained {config.variant}: {args.out / 'checkpoint.pt'}")


def _load(args: argparse.Namespace) -> tuple[DeepLab, PairedImages]:
    model, config = load_trained(args.checkpoint, variant=args.variant)
    return model, open_dataset(config.dataset, args.split)


def _pad(args: argparse.Namespace, default: int | None) -> int | None:
    return default if args.pad_to is None else (args.pad_to or None)


def _is_results(path: Path) -> bool:
    """Whether ``path`` holds a results JSON written by ``evaluate`` (safe to replace)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and {"miou", "checkpoint", "config"} <= data.keys()


def _evaluate(args: argparse.Namespace) -> None:
    refuse_input(args.out, {"--checkpoint": args.checkpoint, "--crf-from": args.crf_from}, "--out")
    refuse_foreign(
        args.out, owned=args.force or _is_results(args.out), writer="evaluate", force="--force"
    )
    base = EvalConfig.for_mode(args.fast)
    crf, tuned_on = (CRFParams(), None) if args.crf_from is None else load_best(args.crf_from)
    changes = {k: v for k, v in vars(args).items() if k in crf.to_dict() and v is not None}
    chosen = None if args.no_crf else dataclasses.replace(crf, **changes)
    config = dataclasses.replace(
        base, crf=chosen, pad_to=_pad(args, base.pad_to), max_images=args.max_images
    )
    model, dataset = _load(args)
    held_out = None
    if tuned_on is not None:
        tuned = set(tuned_on)
        held_out = [index for index in range(len(dataset)) if index not in tuned]
    result = evaluate(model, dataset, config, held_out=held_out, progress=not args.no_progress)
    summary = result.summary
    summary["checkpoint"] = str(args.checkpoint)
    if args.crf_from is not None:
        summary["crf_from"] = str(args.crf_from)
    write_results(summary, args.out)
    scores = ", ".join(f"{k} {100 * v:.2f}" for k, v in summary["miou"].items())
    print(f"mean IoU (%) on all {summary['images']} images: {scores}")
    if held_out is not None:
        part = summary["held_out"]
        scores = ", ".join(f"{k} {100 * v:.2f}" for k, v in part["miou"].items())
        print(f"mean IoU (%) on the {part['images']} images not used to tune the CRF: {scores}")
    print(f"wrote {args.out}")


def _search(args: argparse.Namespace) -> None:
    base = SearchConfig.for_mode(args.fast)
    changes: dict[str, Any] = {
        name: tuple(getattr(args, name))
        for name in ("w1", "theta_alpha", "theta_beta")
        if getattr(args, name) is not None
    }
    for name in ("num_images", "seed", "max_recentres"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.normalization is not None:
        changes["base"] = dataclasses.replace(base.base, normalization=args.normalization)
    config = dataclasses.replace(base, pad_to=_pad(args, base.pad_to), **changes)
    config.validate()
    refuse_input(args.out, {"--checkpoint": args.checkpoint}, "--out")
    model, dataset = _load(args)
    result = search(model, dataset, config, state_path=args.out, progress=not args.no_progress)
    for note in result.notes:
        print(f"note: {note}")
    print(
        f"best {result.best} mean IoU {100 * result.best_miou:.2f} "
        f"(without CRF {100 * result.dcnn_miou:.2f}) on {len(result.images)} images; "
        f"trials in {args.out}"
    )


def _download(args: argparse.Namespace) -> None:
    if args.what in ("vgg16", "all") and args.root is not None:
        raise UsageError("--root applies to voc only; set DEEPLAB_EDU_DATA for the weights")
    if args.what in ("voc", "all"):
        print(f"VOC 2012 with the train_aug list in {prepare_voc(args.root)}")
    if args.what in ("vgg16", "all"):
        vgg16_imagenet_state_dict()
        print(f"VGG-16 IMAGENET1K_V1 weights in {runtime.data_root() / 'weights'}")


def _make_toy(args: argparse.Namespace) -> None:
    if args.out is None and (args.n_train, args.n_val, args.size) == (None, None, None):
        print(f"teaching set in {ensure_toy_voc()}")
        return
    if args.out is None:
        raise UsageError("--out is needed with --n-train/--n-val/--size")
    defaults = ToyConfig()  # the sizes not given are the teaching set's
    sizes = {
        k: getattr(defaults, k) if getattr(args, k) is None else getattr(args, k)
        for k in ("n_train", "n_val", "size")
    }
    print(f"teaching set in {make_toy_voc(args.out, seed=args.seed, **sizes)}")


def _grade(args: argparse.Namespace) -> int:
    if args.time_limit <= 0 or args.memory_mb <= 0:
        raise UsageError(
            f"expected a positive --time-limit and --memory-mb, got {args.time_limit:g} and "
            f"{args.memory_mb}"
        )
    if args.out is not None and not args.overwrite:
        gradebook_paths(args.out)  # an existing gradebook: refused before grading, not after
    with tempfile.TemporaryDirectory(prefix="deeplab-edu-grade-") as work:
        rows = grade(args.paths, Path(work), Limits(args.time_limit, args.memory_mb))
    for student in dict.fromkeys(r.student for r in rows):
        mine = [r for r in rows if r.student == student and r.passed is not None]
        points = sum(r.points or 0 for r in mine)
        top = sum(r.max_points or 0 for r in mine)
        print(
            f"{student}: {points:g} of {top} points ({sum(map(bool, (r.passed for r in mine)))}"
            f" of {len(mine)} exercises passed)"
        )
        for r in mine:
            print(f"  {r.exercise}: {'passed' if r.passed else 'not yet'}. {r.feedback}")
    print("per exercise: passed / submissions, most common first failing case")
    for line in summary(rows):
        print(
            f"  {line['exercise']}: {line['passed']}/{line['submissions']}"
            + (
                f"; {line['failing_there']} first failed on {line['most_common_failing_case']}"
                if line["failing_there"]
                else ""
            )
        )
    if args.out is not None:
        for path in write_gradebook(rows, args.out, overwrite=args.overwrite):
            print(f"gradebook: {path}")
    return 0 if all(r.passed is not False for r in rows) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit status (0 ok, 1 an exercise not passed, 2 a usage or
    data error, 130 interrupted with Ctrl-C).

    Every foreseeable failure (a wrong option, missing data, a checkpoint that does not fit, a
    diverged run) is one line on stderr; an unexpected error keeps its traceback.

    Raises:
        SystemExit: from argparse for a malformed command line (status 2, with usage).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "train": _train,
        "evaluate": _evaluate,
        "crf-search": _search,
        "download": _download,
        "make-toy-data": _make_toy,
        "grade": _grade,
    }
    try:
        status = handlers[args.command](args)
    except (UsageError, OSError, ValueError, FloatingPointError) as error:
        message = _user_message(error)
        if message is None:
            raise  # a ValueError from inside a library is a bug: keep its traceback
        print(f"{parser.prog} {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line saying what was kept, the shell's status 130
        print(f"{parser.prog} {args.command}: interrupted{_what_was_kept(args)}", file=sys.stderr)
        return 130
    return status or 0


def _what_was_kept(args: argparse.Namespace) -> str:
    """After Ctrl-C: where the work done so far is, and how to continue it."""
    if args.command == "train":
        checkpoint = args.out / "checkpoint.pt"
        if checkpoint.is_file():
            return (
                f"; the last checkpoint is {checkpoint}: run the same command with --resume "
                "to continue"
            )
        return "; no checkpoint had been written yet"
    if args.command == "crf-search" and args.out.is_file():
        return f"; the trials scored so far are in {args.out}: run the same command to resume"
    return ""


def _user_message(error: BaseException) -> str | None:
    """The one line to print for a foreseeable failure; None for a bug (keep its traceback).

    Foreseeable: a usage or OS error, or a ValueError the package raised on purpose (its
    innermost frame is the package's own code, not a library's). An error met in a DataLoader
    worker process reaches us re-raised by PyTorch, with the worker's whole traceback as its
    message: the same rule is applied to that traceback, and its last line is the message,
    as with 0 workers.
    """
    text = str(error)
    if text.startswith("Caught ") and " in DataLoader worker process " in text.split("\n")[0]:
        lines = text.split("\n")
        frames = [line for line in lines if line.startswith('  File "')]
        last = max(i for i, line in enumerate(lines) if line.startswith("  "))
        message = "\n".join(lines[last + 1 :]).split(": ", 1)[-1]
        ours = isinstance(error, OSError) or bool(frames and _is_ours(frames[-1]))
        return message if ours else None
    if isinstance(error, UsageError | OSError) or _raised_by_us(error):
        return text
    return None


def _is_ours(frame_line: str) -> bool:
    """Whether a traceback's ``File "...", line N`` line is in the package's code."""
    path = Path(frame_line.split('"')[1])
    return PACKAGE in path.parents


def _raised_by_us(error: BaseException) -> bool:
    """Whether the package raised ``error`` on purpose, with a message for the user: its
    innermost frame is the package's own code, not a library's."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and frame.tb_frame.f_globals.get("__name__", "").startswith(
        "deeplab_edu"
    )
