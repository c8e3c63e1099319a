"""Speed on generated inputs, in one run: the propagation kernels on every available backend,
and end-to-end refinement (decode → refine → encode) by the model and by the baselines."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numba
import numpy as np
import torch

from spnrefine.api import Refiner
from spnrefine.baselines import BASELINES, available_baselines
from spnrefine.errors import SpnrefineError
from spnrefine.propagation import BACKENDS, DIRECTIONS, propagate

Size = tuple[int, int]  # width, height
DEFAULT_SIZES: tuple[Size, ...] = ((512, 512), (1920, 1080), (4096, 3072))
QUICK_SIZES: tuple[Size, ...] = ((96, 64), (160, 120))
DEFAULT_REPEATS = 3
COARSE_FACTOR = 8
# The torch reference walks every scan line in Python: seconds at 512², minutes beyond.
REFERENCE_MAX_PIXELS = 512 * 512
# Kernel input: one class's hidden channels with one shared gate set. The model's own gate
# groups would multiply the gates' memory by 8 (about 5 GB at 4096×3072) to time the same loop.
KERNEL_CHANNELS = 8


@dataclass
class Timing:
    """One timed case: a kernel backend or a refinement method at one size."""

    kind: str  # "kernel" or "refine"
    name: str  # the backend (cpu, reference, cuda) or the method (spn, bilinear, guided, crf)
    device: str
    size: Size
    seconds: float  # median of the timed runs
    runs: int
    peak_mb: float | None  # see `PeakMemory.method`
    gpu_peak_mb: float | None = None  # torch's CUDA allocator peak, for runs on a GPU
    ratios: dict[str, float] = field(default_factory=dict)  # seconds / each baseline's

    def to_dict(self) -> dict:
        data = asdict(self)
        data["size"] = list(self.size)
        return data


class PeakMemory:
    """The rise of the process's peak memory over a block: on Linux the peak resident set
    (VmHWM, reset through /proc/self/clear_refs before the block), elsewhere tracemalloc's
    peak, which sees Python's and numpy's allocations but not torch's."""

    def __init__(self) -> None:
        self.linux = _clear_peak_rss()
        self.method = (
            "peak resident set size during the run, above the size before it (Linux VmHWM)"
            if self.linux
            else "tracemalloc peak during the run (numpy and Python allocations; not torch's)"
        )
        self.peak_bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.linux:
            # Freed memory that malloc still holds would count as in use at the start and
            # hide the block's own allocations that reuse it: hand it back first.
            _trim_heap()
            _clear_peak_rss()
            self._start = _proc_status("VmRSS")
        else:
            tracemalloc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.linux:
            self.peak_bytes = max(0, _proc_status("VmHWM") - self._start)
        else:
            self.peak_bytes = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()


def _clear_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status("VmHWM") > 0
    except OSError:
        return False


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def parse_sizes(text: str) -> list[Size]:
    """`512x512,1920x1080` → [(512, 512), (1920, 1080)] (width × height)."""
    sizes = []
    for part in text.split(","):
        w, sep, h = part.strip().lower().partition("x")
        if not (sep and w.isdigit() and h.isdigit() and int(w) >= 8 and int(h) >= 8):
            raise SpnrefineError(f"--sizes {text}: expected WxH[,WxH...], each side at least 8")
        sizes.append((int(w), int(h)))
    return sizes


def synthetic_case(size: Size, seed: int = 0) -> tuple[bytes, bytes]:
    """A JPEG of coloured shapes on a textured ground, and a 0/255 PNG of the foreground
    shapes at 1/8 of its size (area-averaged, thresholded), as a segmenter might give."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    ground = 90 + 40 * np.sin(xx / (w / 7)) * np.cos(yy / (h / 5))
    image = np.repeat(ground[..., None], 3, axis=2) + rng.normal(0, 12, (h, w, 3))
    mask = np.zeros((h, w), np.uint8)
    scale = min(w, h)
    for k in range(6):
        colour = rng.integers(0, 256, 3).tolist()
        centre = (int(rng.uniform(0.15, 0.85) * w), int(rng.uniform(0.15, 0.85) * h))
        axes = (int(rng.uniform(0.05, 0.2) * scale), int(rng.uniform(0.05, 0.2) * scale))
        shape = np.zeros((h, w), np.uint8)
        cv2.ellipse(shape, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        image[shape > 0] = colour
        mask[shape > 0] = k % 2 == 0  # every other shape is foreground, the rest clutter
    bgr = np.clip(image, 0, 255).astype(np.uint8)[:, :, ::-1]
    small = (max(1, w // COARSE_FACTOR), max(1, h // COARSE_FACTOR))
    coarse = cv2.resize(mask.astype(np.float32), small, interpolation=cv2.INTER_AREA) >= 0.5
    _, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    _, png = cv2.imencode(".png", coarse.astype(np.uint8) * 255)
    return jpeg.tobytes(), png.tobytes()


def kernel_backends() -> list[str]:
    """Backends to time: every one in the registry whose device is here (a CUDA backend where
    torch and numba both see a GPU)."""
    gpu = False
    if torch.cuda.is_available():
        from numba import cuda  # a submodule: `import numba` alone need not load it

        gpu = cuda.is_available()
    return [name for name, b in BACKENDS.items() if b.device == "cpu" or gpu]


def refine_devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@dataclass
class Case:
    kind: str
    name: str
    device: str
    size: Size
    run: Callable[[], object]  # one timed call
    setup: Callable[[], None] | None = None  # before the timed calls, untimed
    teardown: Callable[[], None] | None = None  # after them, to free the inputs


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def kernel_cases(sizes: list[Size], backends: list[str], mode: str) -> Iterator[Case]:
    """Forward propagation, four directions, of a 1×8×H×W map with one gate set, per backend.
    The inputs are made when a case starts and dropped when it ends (over 1 GB at 4096×3072)."""
    inputs: dict[str, torch.Tensor] = {}

    for w, h in sizes:
        for backend in backends:
            if backend == "reference" and w * h > REFERENCE_MAX_PIXELS:
                continue
            device = BACKENDS[backend].device

            def setup(w: int = w, h: int = h, device: str = device) -> None:
                generator = torch.Generator().manual_seed(0)
                x = torch.randn(1, KERNEL_CHANNELS, h, w, generator=generator)
                gates = torch.empty(1, 1, len(DIRECTIONS), 3, h, w).uniform_(
                    -1, 1, generator=generator
                )
                gates /= gates.abs().sum(3, keepdim=True).clamp_(min=1.0)
                inputs["x"], inputs["gates"] = x.to(device), gates.to(device)

            def run(backend: str = backend, device: str = device) -> None:
                with torch.no_grad():
                    propagate(inputs["x"], inputs["gates"], mode, merge=None, backend=backend)
                _sync(device)

            yield Case("kernel", backend, device, (w, h), run, setup, inputs.clear)


def refine_cases(sizes: list[Size], refiners: dict[tuple[str, str], Refiner]) -> Iterator[Case]:
    """Decode → refine → encode of a generated image and its 1/8 coarse mask, per method."""
    inputs: dict[str, bytes] = {}
    for size in sizes:
        for (method, device), refiner in refiners.items():

            def setup(size: Size = size) -> None:
                if inputs.get("size") != size:
                    inputs["image"], inputs["coarse"] = synthetic_case(size)
                    inputs["size"] = size

            def run(refiner: Refiner = refiner, device: str = device) -> None:
                refiner.refine(inputs["image"], inputs["coarse"]).encode()
                _sync(device)

            yield Case("refine", method, device, size, run, setup)


def time_case(case: Case, repeats: int) -> Timing:
    """The median of `repeats` calls; peak memory over the first."""
    if case.setup is not None:
        case.setup()
    if case.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    peak = PeakMemory()
    try:
        for i in range(repeats):
            with peak if i == 0 else contextlib.nullcontext():
                start = time.perf_counter()
                case.run()
                seconds.append(time.perf_counter() - start)
    finally:
        if case.teardown is not None:
            case.teardown()
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if case.device == "cuda" else None
    return Timing(
        case.kind,
        case.name,
        case.device,
        case.size,
        statistics.median(seconds),
        repeats,
        peak.peak_bytes / 2**20,
        gpu_peak,
    )


def add_ratios(timings: list[Timing]) -> None:
    """Each end-to-end timing divided by each baseline's at the same size (on the CPU)."""
    baselines = {
        (t.size, t.name): t.seconds for t in timings if t.kind == "refine" and t.name in BASELINES
    }
    for t in timings:
        if t.kind != "refine":
            continue
        for name in BASELINES:
            base = baselines.get((t.size, name))
            if base:
                t.ratios[name] = t.seconds / base


@dataclass
class BenchReport:
    timings: list[Timing]
    machine: dict
    weights: dict | None
    repeats: int
    memory: str

    def to_dict(self) -> dict:
        return {
            "machine": self.machine,
            "weights": self.weights,
            "repeats": self.repeats,
            "memory": self.memory,
            "kernel_input": f"1x{KERNEL_CHANNELS}xHxW float32, one gate set, "
            f"{len(DIRECTIONS)} directions, forward",
            "results": [t.to_dict() for t in self.timings],
        }


def machine_info() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numba": numba.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": sys.platform,
    }


def plan(
    sizes: list[Size], weights: str | Path | None = None
) -> tuple[list[Case], list[Case], dict | None]:
    """The cases to time, the warm-up cases (tiny, untimed: kernel compilation and first-call
    costs are not what is measured), and the weights' name, source and checksum."""
    refiners: dict[tuple[str, str], Refiner] = {}
    first = None
    for device in refine_devices():
        refiners[("spn", device)] = first = Refiner.load(weights, device=device)
    for method in available_baselines():
        refiners[(method, "cpu")] = Refiner.load(method=method, device="cpu")
    mode = first.model.config.mode
    backends = kernel_backends()
    cases = [*kernel_cases(sizes, backends, mode), *refine_cases(sizes, refiners)]
    warm = [*kernel_cases([(64, 48)], backends, mode), *refine_cases([(64, 48)], refiners)]
    info = first.info.to_dict() if first.info else None
    weights_facts = {k: info[k] for k in ("name", "source", "sha256")} if info else None
    return cases, warm, weights_facts


def run_bench(
    sizes: list[Size] | None = None,
    repeats: int = DEFAULT_REPEATS,
    weights: str | Path | None = None,
    progress: Callable[[int, int, Case], None] | None = None,
) -> BenchReport:
    """Time every case at every size; `progress(i, total, case)` is called before each."""
    if repeats < 1:
        raise SpnrefineError(f"--repeats {repeats}: must be at least 1")
    sizes = list(sizes or DEFAULT_SIZES)
    cases, warm, weights_facts = plan(sizes, weights)
    for case in warm:
        time_case(case, 1)
    timings = []
    for i, case in enumerate(cases):
        if progress is not None:
            progress(i, len(cases), case)
        timings.append(time_case(case, repeats))
    add_ratios(timings)
    return BenchReport(timings, machine_info(), weights_facts, repeats, PeakMemory().method)
