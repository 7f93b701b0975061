"""Benchmark: our permutohedral CRF against pydensecrf, and why exact filtering does not scale.

Run: ``.venv/bin/python benchmarks/bench_crf.py`` (``--runs 5`` for more repetitions).

1. Two held-out VOC photos (not among the book's eight) at four sizes, 0.05 to 1 megapixel,
   21 labels, 10 mean-field iterations, the LargeFOV parameters (4, 121, 5, 3, 3): the median
   of ``--runs`` runs of ours (PyTorch's threads, 2 here) and of pydensecrf (C++, one thread),
   interleaved in this one process; their ratio, the time growth for 4x the pixels, and the
   label agreement. At 0.19 MP also ours on one thread, core for core. On a GPU, ours on CUDA.
   Then peak memory beside time at 0.05, 0.25 and 1 MP (``--memory-only`` runs just this):
   each CRF alone in a fresh process (spawned), its peak resident memory (Linux's VmHWM, reset
   just before the run) minus the resident memory just before it; ours and pydensecrf through
   the same ``dense_crf`` call on the same image and probabilities, and pydensecrf called
   directly on unaries made beforehand (its adapter's three conversions not counted).
2. A val set at 0.19 MP (the two photos, four times each): images/s as ``evaluate`` runs the CRF
   (one image at a time on PyTorch's threads) and in a pool of one-thread processes, one per
   core, to decide whether evaluation should use a pool.
3. Where our time goes: lattice sizes, build time, time per filtering.
4. The exact (naive) method at 64x64 and 128x128: time and kernel memory.

Goals (printed beside each ratio): <= 0.7x pydensecrf at every size on 2 threads (stretch 0.5x
at 0.19 MP), <= 1.0x on one thread, growth <= 4.5x for 4x the pixels, agreement >= 99.5%;
peak memory <= 1.0x pydensecrf's at 1 MP.

Ratios vary from run to run on a shared host: read several runs. The profiles of each
optimisation round (what was measured, done, and tried and dropped) are in the engineering
appendix, "Making the lattice fast: a profiling diary" (book/engineering.ipynb).
"""

from __future__ import annotations

import argparse
import os
import resource
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
from deeplab_edu.crf.simulate import resized_scene
from deeplab_edu.data.voc import read_mask

VOC_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "voc-sample"
PHOTOS = ("2008_008246", "2011_003066")  # 500x375 VOC photos that the book does not ship
SCALES = (0.5, 1.0, 2.0, 2.31)  # about 0.05, 0.19, 0.75 and 1.0 megapixels
MEMORY_SCALES = (0.5, 1.155, 2.31)  # about 0.05, 0.25 and 1.0 megapixels


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


def scenes() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The held-out photos with their masks, or two synthetic scenes without the VOC sample."""
    found = []
    for photo in PHOTOS:
        if (VOC_SAMPLE / "JPEGImages" / f"{photo}.jpg").is_file():
            image = np.array(Image.open(VOC_SAMPLE / "JPEGImages" / f"{photo}.jpg").convert("RGB"))
            found.append(
                (photo, image, read_mask(VOC_SAMPLE / "SegmentationClass" / f"{photo}.png"))
            )
    if found:
        return found
    return [(f"synthetic {seed}", *synthetic_scene(375, 500, seed)) for seed in range(2)]


def resized(image: np.ndarray, mask: np.ndarray, scale: float) -> tuple[np.ndarray, torch.Tensor]:
    """The photo at ``scale`` times its size and its simulated unaries (``resized_scene``)."""
    size = (round(image.shape[0] * scale), round(image.shape[1] * scale))
    picture, probs = resized_scene(image, mask, size)
    return picture.numpy(), probs


def crf_labels(item: tuple[np.ndarray, torch.Tensor]) -> torch.Tensor:
    """The CRF's labels for one (image, probabilities) pair (a pool worker's task)."""
    image, probs = item
    return dense_crf(image, probs).argmax(0).to(torch.uint8)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def resident_mib() -> float:
    """This process's resident memory now, in MiB (Linux: ``/proc/self/statm``)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak() -> bool:
    """Reset this process's peak resident memory to its current value (Linux >= 4.0 resets
    the high-water mark that ``getrusage`` reports when "5" is written to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:  # elsewhere: the peak since start-up, which the small inputs keep low
        return False


def peak_mib() -> float:
    """This process's peak resident memory, in MiB: Linux's VmHWM, else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # in KiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_memory(method: str, scale: float, threads: int) -> tuple[float, float]:
    """Peak memory (MiB) and time (s) of one CRF at ``scale``, run in a fresh process.

    The inputs are made first (the first photo, its unaries) and a small image is run once
    (libraries loaded, thread pools started); the peak is the highest resident memory during
    the measured run minus the resident memory just before it: what the CRF itself needed,
    whichever allocator holds it. ``method`` is a :func:`dense_crf` method (the same image and
    probabilities through the same call) or ``"pydensecrf-direct"``: pydensecrf's own calls on
    unaries made before the measurement (its adapter's conversions not counted).
    """
    torch.set_num_threads(threads)
    _, photo, mask = scenes()[0]
    image, probs = resized(photo, mask, scale)
    small_image, small_probs = resized(photo, mask, 0.2)
    p = CRFParams()
    if method == "pydensecrf-direct":
        import pydensecrf.densecrf as dcrf  # optional: only called when it is installed

        c, h, w = probs.shape
        unary = -np.log(probs.clamp(1e-5, 1.0).numpy()).reshape(c, h * w)
        normalization = {"after": dcrf.NORMALIZE_AFTER, "symmetric": dcrf.NORMALIZE_SYMMETRIC}
        kwargs = {"kernel": dcrf.DIAG_KERNEL, "normalization": normalization[p.normalization]}

        def run() -> None:  # the calls of deeplab_edu.crf.reference, without its conversions
            crf = dcrf.DenseCRF2D(w, h, c)
            crf.setUnaryEnergy(unary)
            crf.addPairwiseGaussian(sxy=p.theta_gamma, compat=p.w2, **kwargs)
            crf.addPairwiseBilateral(
                sxy=p.theta_alpha, srgb=p.theta_beta, rgbim=image, compat=p.w1, **kwargs
            )
            np.asarray(crf.inference(p.iterations))

        dense_crf(small_image, small_probs, method="pydensecrf")
    else:
        dense_crf(small_image, small_probs, method=method)

        def run() -> None:
            dense_crf(image, probs, method=method)

    before = resident_mib()
    if not reset_peak():
        before = max(before, peak_mib())
    seconds = timed(run)[0]
    return peak_mib() - before, seconds


def print_memory(threads: int, has_ref: bool) -> None:
    """Part 1b: peak memory and time of one CRF per fresh process, ours and pydensecrf's."""
    print(
        "\npeak memory: one run per fresh process, the highest resident memory minus that "
        "just before the run (MiB); time of that run (s)"
    )
    methods = ["permutohedral"] + (["pydensecrf", "pydensecrf-direct"] if has_ref else [])
    context = torch.multiprocessing.get_context("spawn")
    for scale in MEMORY_SCALES:
        found = {}
        for method in methods:
            with context.Pool(1) as pool:  # a new process for each measurement
                found[method] = pool.apply(measure_memory, (method, scale, threads))
        _, photo, _ = scenes()[0]
        megapixels = round(photo.shape[0] * scale) * round(photo.shape[1] * scale) / 1e6
        ours, ours_s = found["permutohedral"]
        line = f"peak memory at {megapixels:.2f} MP: ours {ours:.0f} MB ({ours_s:.2f} s)"
        if has_ref:
            (ref, ref_s), (direct, direct_s) = found["pydensecrf"], found["pydensecrf-direct"]
            line += (
                f", pydensecrf {ref:.0f} MB ({ref_s:.2f} s), ratio {ours / ref:.2f} (goal "
                f"<= 1.0); pydensecrf called directly {direct:.0f} MB ({direct_s:.2f} s), "
                f"ratio {ours / direct:.2f}"
            )
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each method (>= 3)")
    parser.add_argument("--skip-naive", action="store_true", help="skip the exact-method part")
    parser.add_argument("--memory-only", action="store_true", help="only the peak memory part")
    args = parser.parse_args()
    params = CRFParams()  # the LargeFOV defaults: (4, 121, 5, 3, 3)
    assert (params.w1, params.theta_alpha, params.theta_beta, params.w2, params.theta_gamma) == (
        4,
        121,
        5,
        3,
        3,
    )
    threads = torch.get_num_threads()
    has_ref = reference_available()
    print(f"21 labels, 10 iterations, params {params}")
    print(f"torch {torch.__version__}, {threads} CPU threads; medians of {max(3, args.runs)} runs")
    if not has_ref:
        print("pydensecrf not installed: ratios skipped (pip install pydensecrf2)")

    if args.memory_only:
        return print_memory(threads, has_ref)

    # -- 1. ours vs pydensecrf, by size ---------------------------------------------------------
    print(
        f"\n{'photo':12s} {'size':>9s} {'MP':>5s} {'ours s':>7s} {'ref s':>7s} {'ratio':>6s} "
        f"{'goal':>5s} {'agree %':>8s}"
    )
    for name, photo, mask in scenes():
        ours_by_scale = {}
        for scale in SCALES:
            image, probs = resized(photo, mask, scale)
            h, w = image.shape[:2]
            dense_crf(image, probs, iterations=1)  # warm-up
            times: dict[str, list[float]] = {"ours": [], "ref": [], "one": []}
            for _ in range(max(3, args.runs)):  # interleaved: a busy moment hits all alike
                times["ours"].append(timed(dense_crf, image, probs)[0])
                if has_ref:
                    times["ref"].append(timed(dense_crf, image, probs, method="pydensecrf")[0])
                if scale == 1.0:
                    torch.set_num_threads(1)
                    times["one"].append(timed(dense_crf, image, probs)[0])
                    torch.set_num_threads(threads)
            ours = ours_by_scale[scale] = statistics.median(times["ours"])
            line = f"{name:12s} {w:4d}x{h:<4d} {h * w / 1e6:5.2f} {ours:7.3f}"
            if has_ref:
                ref = statistics.median(times["ref"])
                q_ours, q_ref = (
                    dense_crf(image, probs),
                    dense_crf(image, probs, method="pydensecrf"),
                )
                agreement = (q_ours.argmax(0) == q_ref.argmax(0)).double().mean().item()
                line += f" {ref:7.3f} {ours / ref:6.2f} {'0.7':>5s} {100 * agreement:8.3f}"
            print(f"RATIO {line}" if has_ref else line)
            if scale == 1.0:
                one = statistics.median(times["one"])
                text = f"  one thread {one:.3f} s"
                if has_ref:
                    text += f" -> RATIO {one / ref:.2f} (goal <= 1.0, pydensecrf is one thread)"
                print(text)
        growth = ", ".join(
            f"{ours_by_scale[b] / ours_by_scale[a]:.1f}x" for a, b in ((0.5, 1.0), (1.0, 2.0))
        )
        print(f"  time growth for 4x the pixels (0.05 -> 0.19 -> 0.75 MP): {growth} (goal <= 4.5x)")

    if torch.cuda.is_available():  # a reader with a GPU: the same code on CUDA
        device = torch.device("cuda")
        name, photo, mask = scenes()[0]
        image, probs = resized(photo, mask, 1.0)
        image_gpu, probs_gpu = torch.from_numpy(image).to(device), probs.to(device)
        dense_crf(image_gpu, probs_gpu)
        torch.cuda.synchronize()
        runs = []
        for _ in range(max(3, args.runs)):
            start = time.perf_counter()
            dense_crf(image_gpu, probs_gpu)
            torch.cuda.synchronize()
            runs.append(time.perf_counter() - start)
        gpu = statistics.median(runs)
        text = f"CUDA ({torch.cuda.get_device_name(device)}), {name} at 0.19 MP: {gpu:.3f} s, "
        text += f"{1 / gpu:.1f} images/s"
        if has_ref:
            ref = statistics.median(
                timed(dense_crf, image, probs, method="pydensecrf")[0] for _ in range(3)
            )
            text += f"; RATIO to pydensecrf {gpu / ref:.2f}"
        print(text)
    else:
        print("no CUDA device: the GPU measurement is skipped")
    print_memory(threads, has_ref)

    # -- 2. a val set at 0.19 MP: PyTorch's threads (as evaluate runs) or a pool of processes --
    images = [resized(photo, mask, 1.0) for _, photo, mask in scenes()] * 4  # 8 VOC-sized
    began = time.perf_counter()
    for image, probs in images:
        dense_crf(image, probs)
    threaded = len(images) / (time.perf_counter() - began)
    context = torch.multiprocessing.get_context("spawn")  # fork is unsafe once OpenMP has run
    with context.Pool(threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        pool.map(crf_labels, images[:threads])  # the workers' start-up is not counted
        began = time.perf_counter()
        pool.map(crf_labels, images, chunksize=1)
        pooled = len(images) / (time.perf_counter() - began)
    print(
        f"\nval set at 0.19 MP ({len(images)} images): {threaded:.2f} images/s on {threads} "
        f"threads (as evaluate runs), {pooled:.2f} images/s in {threads} one-thread processes "
        f"({pooled / threaded:.2f}x); VOC val's 1449 images: {1449 / threaded / 60:.0f} min"
    )

    name, photo, mask = scenes()[0]  # the next part at 0.19 MP
    image, probs = resized(photo, mask, 1.0)
    h, w = image.shape[:2]

    # -- 3. where the time goes (one thread, for steadier numbers) ------------------------------
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
        print(
            f"{label}: {lattice.num_vertices} vertices for {h * w} pixels "
            f"({lattice.num_vertices / (h * w):.3f} per pixel); build "
            f"{statistics.median(t for t, _ in builds):.3f} s, once per image"
        )
    message = PairwiseMessage(lattices, (params.w1, params.w2), "symmetric")
    q = torch.softmax(torch.rand(h * w, 21), 1)
    per_message = statistics.median(timed(message, q)[0] for _ in range(5))
    per_softmax = statistics.median(timed(torch.softmax, q, 1)[0] for _ in range(5))
    print(
        f"per iteration: message of both kernels for 21 labels {per_message:.3f} s (one sparse "
        f"splat, 9 blurs, one sparse slice) + softmax {per_softmax:.3f} s"
    )

    # -- 4. the exact method -----------------------------------------------------------------
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
        print(
            f"naive {size}x{size} ({n} pixels, {n * n / 1e6:.0f}M kernel entries): one "
            f"filtering {per_filter:.3f} s, 10 iterations {naive_time}, kernel memory "
            f"{memory / 2**20:.0f} MiB ({held}); lattice: {lattice_time:.3f} s"
        )


if __name__ == "__main__":
    main()
