"""The GPU check: every CUDA path of the package run once, measured, and written to one JSON.

Usage::

    make gpu-check                            # python3 -m tools.gpu_check --out benchmarks/results
    python -m tools.gpu_check --dry --out D   # anywhere: the same code on the CPU at toy sizes

It needs only PyTorch, torchvision, NumPy, Pillow, matplotlib and pytest (what a GPU machine's
image usually holds): the checkout is put on ``sys.path``, nothing is installed or downloaded.
Parts that need a missing package (pydensecrf, nbclient) are skipped, saying which. Sized to
finish within 6 minutes on one H100/H200. The parts:

1. ``tests``: the ``gpu``-marked tests and the tests of device selection (pytest, one process).
2. ``crf_sizes``: ``dense_crf`` on CUDA against the CPU on two of the package's real photos at
   0.05, 0.2 and 0.75 megapixels (21 labels, 10 iterations, LargeFOV's parameters): label
   agreement, time, peak GPU memory; pydensecrf on the CPU beside them when installed.
3. ``crf_batch``: a batch of the eight photos at VOC size (375x500) in one ``dense_crf`` call.
4. ``crf_layer``: ``MeanFieldCRF`` forward and backward on CUDA against the CPU (gradients equal
   within float32 round-off).
5. ``training``: a fast-mode training run of a few hundred iterations and its evaluation, with
   and without the CRF, on CUDA.
6. ``throughput``: DeepLab-LargeFOV's forward pass (full width) at 321x321 and 513x513, batch 1
   and 16, float32 and bfloat16: frames per second, beside the paper's 8 on a 2014 GPU.
7. ``chapter``: one chapter executed with nbclient on CUDA.

``--dry`` (what the unit tests run, so that this script cannot rot): every part's code on the
CPU at toy sizes, the CPU standing in for CUDA; the figures are then no measurements, and the
JSON says ``"dry": true``. The pytest part only collects its tests; the chapter part is skipped
(the chapters tier executes every chapter). Exit status 1 if any part failed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the checkout, not an installed copy: what is measured is this
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from deeplab_edu.crf import CRFParams, MeanFieldCRF, dense_crf  # noqa: E402
from deeplab_edu.crf.reference import reference_available  # noqa: E402
from deeplab_edu.crf.simulate import resized_scene  # noqa: E402
from deeplab_edu.data import PHOTOS_SPLIT, voc_dir  # noqa: E402
from deeplab_edu.data.voc import VOCSegmentation  # noqa: E402
from deeplab_edu.models import deeplab  # noqa: E402
from deeplab_edu.outputs import temporary_path  # noqa: E402

PAPER_FPS = 8.0  # DeepLab at 306x306 on an NVIDIA Titan, CRF excluded (paper, section 4.1)
CHAPTER = "crf"  # the chapter executed on CUDA: the network and the CRF on the GPU
# beside the gpu-marked tests, those that run on the device the package picks (CUDA there):
# device selection, exact resume (bit-identical weights), evaluation
DEVICE_TESTS = [
    "tests/test_runtime.py",
    "tests/test_modes.py",
    "tests/test_train.py::test_training_is_deterministic_and_resumes_exactly",
    "tests/test_evaluate.py",
    "-m",
    "not slow",
]


class Skip(Exception):
    """A part that cannot run here, with the reason."""


def photos(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``count`` of the package's real photos as ``(uint8 (H, W, 3), mask (H, W))``."""
    data = VOCSegmentation(voc_dir("photos"), PHOTOS_SPLIT)
    return [(data[i][0].permute(1, 2, 0).contiguous(), data[i][1]) for i in range(count)]


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Seconds of one call of ``fn`` (CUDA work waited for) and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def peak_mib(device: torch.device, fn: Callable[[], object]) -> float | None:
    """The peak GPU memory (MiB) allocated while ``fn`` runs, above what was allocated before."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """The fraction of pixels on which two probability maps pick the same label."""
    return float((a.argmax(-3).cpu() == b.argmax(-3).cpu()).double().mean())


def environment(device: torch.device, dry: bool) -> dict:
    """What ran: versions, the device, the commit measured."""
    commit = os.environ.get("DEEPLAB_EDU_COMMIT")
    if not commit:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()
    info = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit or "unknown (no git here: set DEEPLAB_EDU_COMMIT)",
        "dry": dry,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": installed_version("torchvision"),
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        "pydensecrf": reference_available(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "device_name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "capability": f"{props.major}.{props.minor}",
        }
    return info


def part_tests(device: torch.device, dry: bool) -> dict:
    """The gpu-marked tests and the device-selection tests, in one pytest process."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs"]
        command += ["--collect-only"] if dry else [f"--junitxml={report}"]
        marked = sorted(
            str(path.relative_to(REPO))
            for path in (REPO / "tests").glob("test_*.py")
            if "pytest.mark.gpu" in path.read_text()
        )
        selections = [["-m", "gpu", *marked], DEVICE_TESTS]
        results: dict = {"selections": [" ".join(s) for s in selections]}
        for selection in selections:
            run = subprocess.run(
                command + selection,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=600,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            tail = run.stdout.strip().splitlines()[-1:] or [run.stderr.strip()[-300:]]
            results.setdefault("summaries", []).append(tail[0])
            if run.returncode != 0:
                raise RuntimeError(f"pytest {' '.join(selection)} failed:\n{run.stdout[-3000:]}")
            if dry:
                continue
            cases = ET.parse(report).getroot().iter("testcase")
            for case in cases:
                outcome = "passed"
                for child in case:
                    if child.tag in ("failure", "error", "skipped"):
                        outcome = child.tag
                results.setdefault(outcome, []).append(
                    f"{case.get('classname')}::{case.get('name')}"
                )
        results["counts"] = {
            k: len(results[k]) for k in ("passed", "skipped", "failure", "error") if k in results
        }
        if device.type == "cuda" and not dry and results["counts"].get("skipped"):
            skipped = results["counts"]["skipped"]
            results["note"] = f"{skipped} tests skipped on the CUDA machine (see 'skipped')"
        return results


def installed_version(package: str) -> str | None:
    """``package``'s installed version, or None when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def crf_row(picture: torch.Tensor, probs: torch.Tensor, device: torch.device) -> dict:
    """One image's CRF on the CPU, on the device and (if installed) by pydensecrf."""
    cpu = torch.device("cpu")
    row = {"height": picture.shape[0], "width": picture.shape[1]}
    row["cpu_s"], on_cpu = timed(lambda: dense_crf(picture, probs), cpu)
    image_d, probs_d = picture.to(device), probs.to(device)
    dense_crf(image_d, probs_d)  # warm-up: CUDA kernels load on first use
    row["device_s"], on_device = timed(lambda: dense_crf(image_d, probs_d), device)
    row["device_peak_mib"] = peak_mib(device, lambda: dense_crf(image_d, probs_d))
    row["agreement_with_cpu"] = agreement(on_device, on_cpu)
    row["max_abs_difference"] = float((on_device.cpu() - on_cpu).abs().max())
    row["speedup_vs_cpu"] = row["cpu_s"] / row["device_s"]
    if reference_available():
        row["pydensecrf_s"], ref = timed(
            lambda: dense_crf(picture, probs, method="pydensecrf"), cpu
        )
        row["agreement_with_pydensecrf"] = agreement(on_device, ref)
        row["speedup_vs_pydensecrf"] = row["pydensecrf_s"] / row["device_s"]
    if row["agreement_with_cpu"] < 0.995:
        raise AssertionError(f"labels differ from the CPU's on too many pixels: {row}")
    return row


def part_crf_sizes(device: torch.device, dry: bool) -> dict:
    """dense_crf on the device against the CPU (and pydensecrf) at three image sizes."""
    sizes = (0.002, 0.004) if dry else (0.05, 0.2, 0.75)  # megapixels
    rows = []
    for index, (image, mask) in enumerate(photos(1 if dry else 2)):
        for megapixels in sizes:
            scale = math.sqrt(megapixels * 1e6 / mask.numel())
            size = round(mask.shape[0] * scale), round(mask.shape[1] * scale)
            row = crf_row(*resized_scene(image, mask, size), device)
            rows.append({"photo": index, "megapixels": megapixels, **row})
    return {"params": CRFParams().to_dict(), "labels": 21, "rows": rows}


def part_crf_batch(device: torch.device, dry: bool) -> dict:
    """The eight photos at VOC size as one batch on the device."""
    height, width = (24, 32) if dry else (375, 500)
    pairs = [resized_scene(image, mask, (height, width)) for image, mask in photos(2 if dry else 8)]
    images = torch.stack([p for p, _ in pairs]).to(device)
    probs = torch.stack([q for _, q in pairs]).to(device)
    dense_crf(images[:1], probs[:1])  # warm-up
    seconds, q = timed(lambda: dense_crf(images, probs), device)
    peak = peak_mib(device, lambda: dense_crf(images, probs))
    on_cpu = dense_crf(images[:2].cpu(), probs[:2].cpu())
    return {
        "batch": len(images),
        "height": height,
        "width": width,
        "seconds": seconds,
        "images_per_s": len(images) / seconds,
        "device_peak_mib": peak,
        "agreement_with_cpu_first_two": agreement(q[:2], on_cpu),
    }


def part_crf_layer(device: torch.device, dry: bool) -> dict:
    """MeanFieldCRF's forward and backward on the device against the CPU."""
    image, mask = photos(1)[0]
    picture, probs = resized_scene(image, mask, (16, 20) if dry else (120, 160))
    logits = probs.log()[None]
    results = {}
    for key, where in (("cpu", torch.device("cpu")), ("device", device)):
        layer = MeanFieldCRF(21, CRFParams(iterations=5)).to(where)
        x = logits.to(where).clone().requires_grad_(True)
        seconds, q = timed(lambda la=layer, xx=x, w=where: la(picture[None].to(w), xx), where)
        loss = (q * torch.linspace(0, 1, 21, device=where)[:, None, None]).sum()
        loss.backward()
        results[key] = {
            "q": q.detach().cpu(),
            "forward_s": seconds,
            "grad_logits": x.grad.cpu(),
            "grad_weights": layer.log_weights.grad.cpu(),
            "grad_compatibility": layer.compatibility.grad.cpu(),
        }
    cpu, dev = results["cpu"], results["device"]
    out = {"size": list(picture.shape[:2]), "iterations": 5}
    for key in ("q", "grad_logits", "grad_weights", "grad_compatibility"):
        scale = float(cpu[key].abs().max()) or 1.0
        out[f"{key}_max_relative_difference"] = float((dev[key] - cpu[key]).abs().max()) / scale
        if out[f"{key}_max_relative_difference"] > 1e-3:
            raise AssertionError(f"{key} differs from the CPU's beyond float32 round-off: {out}")
    out["forward_s_cpu"], out["forward_s_device"] = cpu["forward_s"], dev["forward_s"]
    return out


def part_training(device: torch.device, dry: bool) -> dict:
    """A short fast-mode training run on a generated set and its evaluation, on the device."""
    from deeplab_edu.checkpoint import read_metrics
    from deeplab_edu.data.toy import ToyConfig, make_toy_voc
    from deeplab_edu.evaluate import EvalConfig, evaluate
    from deeplab_edu.runtime import device as picked
    from deeplab_edu.train import TrainConfig, train

    if picked().type != device.type:
        raise Skip(f"the package picks {picked()}, not {device}")
    iterations = 3 if dry else 300
    config = TrainConfig.fast(iterations=iterations, checkpoint_every=iterations)
    toy = ToyConfig()
    with tempfile.TemporaryDirectory() as folder:
        sizes = (4, 2, 40) if dry else (toy.n_train, toy.n_val, toy.size)
        root = make_toy_voc(Path(folder) / "toy", *sizes, seed=toy.seed)
        train_s, model = timed(
            lambda: train(
                config, Path(folder) / "run", dataset=VOCSegmentation(root, "train"), progress=False
            ),
            device,
        )
        trained_on = next(model.parameters()).device
        if trained_on.type != device.type:
            raise AssertionError(f"the network trained on {trained_on}, not {device}")
        losses = [row["loss"] for row in read_metrics(Path(folder) / "run")]
        evaluation = evaluate(
            model, VOCSegmentation(root, "val"), EvalConfig.fast(), progress=False
        )
    summary = evaluation.summary
    return {
        "iterations": iterations,
        "batch_size": config.batch_size,
        "crop": config.crop,
        "train_s": train_s,
        "iterations_per_s": iterations / train_s,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "eval_images": summary["images"],
        "miou": summary["miou"],
        "seconds_per_image": summary["seconds_per_image"],
    }


def part_throughput(device: torch.device, dry: bool) -> dict:
    """DeepLab-LargeFOV's forward pass: frames per second by size, batch and precision."""
    width, sizes, batches, repeats = (
        (0.125, (33,), (1, 2), 1) if dry else (1.0, (321, 513), (1, 16), 10)
    )
    model = deeplab("DeepLab-LargeFOV", width=width).to(device).eval()
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for size in sizes:
            for batch in batches:
                x = torch.randn(batch, 3, size, size, device=device)
                autocast = torch.autocast(
                    device.type, dtype=torch.bfloat16, enabled=dtype != torch.float32
                )

                def run(x: torch.Tensor = x, autocast=autocast) -> None:
                    with torch.no_grad(), autocast:
                        model(x)

                run()  # warm-up (cuDNN picks its algorithms)
                seconds, _ = timed(lambda: [run() for _ in range(repeats)], device)
                rows.append(
                    {
                        "dtype": str(dtype).removeprefix("torch."),
                        "size": size,
                        "batch": batch,
                        "fps": batch * repeats / seconds,
                    }
                )
    return {"variant": "DeepLab-LargeFOV", "width": width, "paper_fps": PAPER_FPS, "rows": rows}


def part_chapter(device: torch.device, dry: bool) -> dict:
    """One chapter executed with nbclient (the kernel sees this checkout and the device)."""
    if dry:
        raise Skip("dry run: the chapters tier executes every chapter (make chapters)")
    missing = [
        m for m in ("nbclient", "nbformat", "ipykernel") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise Skip(f"not installed here: {', '.join(missing)} (carry their wheels to run it)")
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(REPO / "book" / f"{CHAPTER}.ipynb", as_version=4)
    with tempfile.TemporaryDirectory() as folder:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        client = NotebookClient(notebook, timeout=600, resources={"metadata": {"path": folder}})
        seconds, _ = timed(client.execute, device)
    errors = [
        o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    text = "".join(
        o.get("text", "")
        for c in notebook.cells
        for o in c.get("outputs", [])
        if o.get("name") == "stdout"
    )
    if "cuda" not in text:
        raise AssertionError(f"the chapter {CHAPTER} did not say it ran on CUDA:\n{text[:500]}")
    return {"chapter": CHAPTER, "seconds": seconds, "errors": len(errors)}


PARTS: dict[str, Callable[[torch.device, bool], dict]] = {
    "tests": part_tests,
    "crf_sizes": part_crf_sizes,
    "crf_batch": part_crf_batch,
    "crf_layer": part_crf_layer,
    "training": part_training,
    "throughput": part_throughput,
    "chapter": part_chapter,
}


def summary_lines(report: dict) -> list[str]:
    """A few lines for the terminal: each part's status and its headline figures."""
    lines = [
        f"{report['environment'].get('device_name', report['environment']['device'])}"
        f"{' (dry run on the CPU: no measurements)' if report['environment']['dry'] else ''}"
    ]
    for name, part in report["parts"].items():
        head = f"{name:11s} {part['status']:8s} {part['seconds']:7.1f} s"
        if part["status"] != "ok":
            head += f"  {part.get('reason', '').splitlines()[0][:150]}"
        lines.append(head)
        for row in part.get("rows", []):
            lines.append(
                "    "
                + ", ".join(
                    f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                )
            )
    return lines


def run_check(dry: bool, only: list[str] | None = None) -> dict:
    """Every part (or ``only`` those), each timed and caught; the report as a dict."""
    cuda = torch.cuda.is_available() and not dry
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda and not dry:
        raise SystemExit("no CUDA device here: run with --dry for the CPU stand-in")
    report = {"environment": environment(device, dry), "parts": {}}
    for name, part in PARTS.items():
        if only and name not in only:
            continue
        start = time.perf_counter()
        try:
            entry = {"status": "ok", **part(device, dry)}
        except Skip as reason:
            entry = {"status": "skipped", "reason": str(reason)}
        except Exception as error:  # noqa: BLE001 (one part's failure must not hide the others)
            entry = {
                "status": "failed",
                "reason": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc()[-4000:],
            }
        entry["seconds"] = time.perf_counter() - start
        report["parts"][name] = entry
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="the CPU stand-in at toy sizes")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results",
        help="folder of the JSON (default benchmarks/results)",
    )
    parser.add_argument("--only", nargs="*", choices=list(PARTS), help="run only these parts")
    args = parser.parse_args(argv)
    report = run_check(args.dry, args.only)
    env = report["environment"]
    slug = "dry" if args.dry else env.get("device_name", "cuda").replace(" ", "-").lower()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = env["date"][:19].replace(":", "")  # one file per run: never over an earlier one
    path = args.out / f"gpu-check-{slug}-{stamp}.json"
    partial = temporary_path(path)
    partial.write_text(json.dumps(report, indent=1) + "\n")
    partial.replace(path)  # complete or absent
    print("\n".join(summary_lines(report)))
    print(f"written: {path}")
    return 1 if any(p["status"] == "failed" for p in report["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
