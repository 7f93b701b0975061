"""Benchmark: our permutohedral CRF against pydensecrf, and why exact filtering does not scale.

Run: ``.venv/bin/python benchmarks/bench_crf.py`` (add ``--runs 9`` for more repetitions).

1. A 500x375 image, 21 labels, 10 mean-field iterations, the paper's LargeFOV parameters
   (w1, theta_alpha, theta_beta, w2, theta_gamma) = (4, 121, 5, 3, 3): median of >= 5 runs of
   ours (CPU) and of pydensecrf, interleaved in this one process, and their ratio.
2. Where our time goes: lattice sizes, build time, time per filtering.
3. The exact (naive) method at 64x64 and 128x128: time and kernel memory.

Goal: ratio <= 1.0 (stretch <= 0.5). Measured on a quiet 2-core machine: pydensecrf 0.572 s,
ours 0.412 s with two threads (0.72) and 0.710 s with one (1.24). Under load two threads can
be slower than one, so both are printed.

What was tried, profiling first (from about 2.4 s to 0.41 s):
- splat and slice as sparse matrix products instead of scattered index additions: ~4x there;
- both kernels folded into one splat and one slice;
- one 64-bit integer code per lattice vertex and a single sort, instead of per-coordinate keys
  and ``unique``: the d = 5 build from ~0.45 s to ~0.11 s;
- the rank computed with a loop over the d + 1 coordinates (4x faster than a comparison matrix);
- neighbour look-ups on one side only, the other side by the inverse map; 32-bit sparse indices;
- tried and dropped: numbering vertices by first appearance (no gain), sparse matrices for the
  blur (slower than indexing).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deeplab_edu.crf import (
    CRFParams,
    NaiveFilter,
    PermutohedralLattice,
    appearance_features,
    dense_crf,
    reference_available,
    simulate_unaries,
    smoothness_features,
)
from deeplab_edu.crf.meanfield import PairwiseMessage
from deeplab_edu.data.voc import read_mask

VOC_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "voc-sample"
PHOTO = "2008_007586"  # a 500x375 photo of the real VOC sample, when present


def synthetic_scene(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A real-looking stand-in: smooth shaded regions with texture noise, and their mask."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    mask = torch.zeros(height, width, dtype=torch.long)
    for label, (cy, cx, r) in enumerate([(0.5, 0.3, 0.25), (0.4, 0.75, 0.2), (0.8, 0.6, 0.15)], 1):
        mask[(y - cy) ** 2 + ((x - cx) * width / height) ** 2 < r**2] = label * 5
    base = torch.rand(21, 3, generator=g) * 200 + 20
    image = base[mask] * (0.7 + 0.3 * y[..., None]) + 8 * torch.randn(height, width, 3, generator=g)
    return image.clamp(0, 255).to(torch.uint8).numpy(), mask.numpy()


def scene() -> tuple[str, np.ndarray, np.ndarray]:
    if (VOC_SAMPLE / "JPEGImages" / f"{PHOTO}.jpg").is_file():
        image = np.array(Image.open(VOC_SAMPLE / "JPEGImages" / f"{PHOTO}.jpg").convert("RGB"))
        mask = read_mask(VOC_SAMPLE / "SegmentationClass" / f"{PHOTO}.png")
        return f"VOC photo {PHOTO}", image, mask
    image, mask = synthetic_scene(375, 500)
    return "synthetic scene (VOC sample absent)", image, mask


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="repetitions of each method (>= 5)")
    parser.add_argument("--skip-naive", action="store_true", help="skip the exact-method part")
    args = parser.parse_args()
    params = CRFParams()  # the LargeFOV defaults: (4, 121, 5, 3, 3)
    assert (params.w1, params.theta_alpha, params.theta_beta, params.w2, params.theta_gamma) == (
        4, 121, 5, 3, 3)  # fmt: skip
    name, image, mask = scene()
    probs = simulate_unaries(mask, 21, seed=0)  # (21, H, W)
    h, w = mask.shape
    print(f"image: {name}, {w}x{h}, 21 labels, 10 iterations, params {params}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    # -- 1. ours vs pydensecrf ---------------------------------------------------------------
    # pydensecrf runs on one core; we time ours with PyTorch's default threads and with one
    # thread (fair core for core, and steadier when other processes load the machine)
    threads = torch.get_num_threads()
    dense_crf(image, probs, iterations=1)  # warm-up
    times: dict[str, list[float]] = {f"ours, {threads} threads": [], "ours, 1 thread": []}
    has_ref = reference_available()
    if has_ref:
        times["pydensecrf (C++, 1 thread)"] = []
    for _ in range(max(5, args.runs)):  # interleaved, so that load changes hit all alike
        times[f"ours, {threads} threads"].append(timed(dense_crf, image, probs)[0])
        torch.set_num_threads(1)
        times["ours, 1 thread"].append(timed(dense_crf, image, probs)[0])
        torch.set_num_threads(threads)
        if has_ref:
            times["pydensecrf (C++, 1 thread)"].append(
                timed(dense_crf, image, probs, method="pydensecrf")[0]
            )
    medians = {label: statistics.median(runs) for label, runs in times.items()}
    for label, runs in times.items():
        listed = ", ".join(f"{t:.2f}" for t in runs)
        print(f"{label:28s} median {medians[label]:.3f} s  (runs: {listed})")
    if has_ref:
        q_ours, q_ref = dense_crf(image, probs), dense_crf(image, probs, method="pydensecrf")
        agreement = (q_ours.argmax(0) == q_ref.argmax(0)).double().mean().item()
        reference = medians["pydensecrf (C++, 1 thread)"]
        for label in list(medians)[:2]:
            print(f"RATIO {label} / pydensecrf = {medians[label] / reference:.2f}"
                  "  (goal <= 1.0, stretch <= 0.5)")  # fmt: skip
        print(f"label agreement with pydensecrf: {100 * agreement:.3f}% of pixels")
    else:
        print("pydensecrf not installed: ratio skipped (pip install pydensecrf2)")

    # -- 2. where the time goes (one thread, for steadier numbers) ------------------------------
    torch.set_num_threads(1)
    image_t = torch.from_numpy(image)
    lattices = []
    for label, features in (
        ("appearance (d=5)", appearance_features(image_t, params.theta_alpha, params.theta_beta)),
        ("smoothness (d=2)", smoothness_features(h, w, params.theta_gamma)),
    ):
        builds = [timed(PermutohedralLattice, features) for _ in range(3)]
        lattice = builds[0][1]
        lattices.append(lattice)
        print(f"{label}: {lattice.num_vertices} vertices for {h * w} pixels "
              f"({lattice.num_vertices / (h * w):.3f} per pixel); build "
              f"{statistics.median(t for t, _ in builds):.3f} s, once per image")  # fmt: skip
    message = PairwiseMessage(lattices, (params.w1, params.w2), "symmetric")
    q = torch.softmax(torch.rand(h * w, 21), 1)
    per_message = statistics.median(timed(message, q)[0] for _ in range(5))
    per_softmax = statistics.median(timed(torch.softmax, q, 1)[0] for _ in range(5))
    print(f"per iteration: message of both kernels for 21 labels {per_message:.3f} s (one sparse "
          f"splat, 9 blurs, one sparse slice) + softmax {per_softmax:.3f} s")  # fmt: skip

    # -- 3. the exact method -----------------------------------------------------------------
    if args.skip_naive:
        return
    for size in (64, 128):
        small_image, small_mask = synthetic_scene(size, size)
        small_probs = simulate_unaries(small_mask, 21, seed=0)
        features = appearance_features(torch.from_numpy(small_image), 121, 5)
        exact = NaiveFilter(features)
        n = size * size
        memory = exact.kernel.numel() * 4 if exact.kernel is not None else exact.chunk_size * n * 4
        per_filter = statistics.median(timed(exact, torch.rand(n, 21))[0] for _ in range(3))
        lattice_time = timed(dense_crf, small_image, small_probs)[0]
        if size == 64:
            naive_time = f"{timed(dense_crf, small_image, small_probs, method='naive')[0]:.2f} s"
        else:  # 22 exact filterings (2 kernels x 10 iterations + 2 normalisers)
            naive_time = f"~{22 * per_filter:.1f} s (22 x one filtering)"
        held = "whole matrix kept" if exact.kernel is not None else "one chunk of rows"
        print(f"naive {size}x{size} ({n} pixels, {n * n / 1e6:.0f}M kernel entries): one "
              f"filtering {per_filter:.3f} s, 10 iterations {naive_time}, kernel memory "
              f"{memory / 2**20:.0f} MiB ({held}); lattice: {lattice_time:.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
