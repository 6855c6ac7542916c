"""Shared helpers of the cfbi_ops tests: skip markers, tolerances and random case builders.

Embeddings are small (0.1 * randn): with unit-variance embeddings the squared distances are ~2C and
the score 1 - 2 / (1 + exp(d + b)) saturates to 1 (no gradient), which would hide most bugs.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# torch.compile's cache is shared by every checkout on a machine by default, and its keys do not include the op
# schemas: a checkout whose cfbi:: schemas differ would replay graphs compiled for another. One cache per checkout.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(REPO_ROOT, "build", "torchinductor"))

# CFBI_TEST_BLOCK_EXTENSION=1: the suite runs as on a machine where cfbi_ops._C cannot be loaded (CI runs the op
# and model tests so once). The blocker must be in place before the first import of cfbi_ops.
BLOCK_EXTENSION_CODE = """
import sys
class _BlockCfbiExtension:
    def find_spec(self, name, path=None, target=None):
        if name == "cfbi_ops._C":
            raise ImportError("cfbi_ops._C blocked by CFBI_TEST_BLOCK_EXTENSION")
        return None
sys.meta_path.insert(0, _BlockCfbiExtension())
"""
if os.environ.get("CFBI_TEST_BLOCK_EXTENSION") == "1":
    assert "cfbi_ops" not in sys.modules, "cfbi_ops was imported before the extension could be blocked"
    exec(BLOCK_EXTENSION_CODE)

import cfbi_ops  # noqa: E402

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
requires_extension = pytest.mark.skipif(not cfbi_ops.HAS_EXTENSION, reason="needs the compiled extension")
# Tests of the compiled kernels themselves (raw ops, dispatch, opcheck) skip when the public functions are
# forced onto the reference, as well as without the extension.
COMPILED = cfbi_ops.resolve_backend() == "compiled"
requires_compiled = pytest.mark.skipif(not COMPILED, reason="the public ops run on the reference backend")

# Output tolerances (values) and gradient tolerances, per dtype.
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-10, atol=1e-10),
}
GRAD_TOL = {
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float64: dict(rtol=1e-9, atol=1e-10),
    # Two kernels' 16-bit gradients (CUDA and CPU): the scores they start from may differ by one rounding.
    torch.float16: dict(rtol=2e-2, atol=2e-3),
    torch.bfloat16: dict(rtol=5e-2, atol=2e-2),
}

DTYPES = [torch.float32, torch.float64]
IGNORE = 255


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def embeddings(shape, dtype, g: torch.Generator, scale: float = 0.1) -> torch.Tensor:
    """Small random embeddings (drawn in float64 so float32 and float64 cases see the same numbers)."""
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)


def random_labels(
    shape,
    num_labels: int,
    g: torch.Generator,
    *,
    absent=(),
    ignore_fraction: float = 0.1,
    out_of_range_fraction: float = 0.05,
    dtype=torch.int64,
    skew: float | None = None,
) -> torch.Tensor:
    """Labels in [0, num_labels) with some pixels ignored: value 255 and value num_labels + 1 (>= L).

    Labels listed in `absent` never appear (their pixels are turned into ignored / other labels).
    skew: label l is drawn with probability proportional to skew**l (objects of very different sizes,
    so that atrous_min_pixels keeps some labels whole and subsamples others).
    """
    if skew is None:
        labels = torch.randint(0, num_labels, shape, generator=g)
    else:
        probs = torch.tensor([skew**label for label in range(num_labels)], dtype=torch.float64)
        numel = 1
        for n in shape:
            numel *= n
        labels = torch.multinomial(probs, numel, replacement=True, generator=g).reshape(shape)
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    labels[u < ignore_fraction] = IGNORE
    labels[(u >= ignore_fraction) & (u < ignore_fraction + out_of_range_fraction)] = num_labels + 1
    present = [label for label in range(num_labels) if label not in absent]
    for label in absent:
        mask = labels == label
        if present:
            replacement = torch.tensor(present)[torch.randint(0, len(present), (int(mask.sum()),), generator=g)]
            labels[mask] = replacement
        else:
            labels[mask] = IGNORE
    if dtype == torch.uint8:
        labels = labels.clamp(max=255)
    return labels.to(dtype)


def make_bias(value: float, dtype, shape=(1,), requires_grad: bool = True) -> torch.Tensor:
    return torch.full(shape, value, dtype=dtype).requires_grad_(requires_grad)


# ------------------------------------------------------------------------------------------ op cases
@dataclass(frozen=True)
class Case:
    """Every argument that shapes one call of an op; `inputs` makes its tensors. The op harness
    (tests/test_ops_harness.py) keeps the shared list of cases, tests/test_ops_fuzz.py draws them."""

    op: str  # "global" or "local"
    B: int = 1
    C: int = 4
    H: int = 6
    W: int = 7
    L: int = 3
    atrous: int = 1
    min_pixels: int = 0  # global only
    T: int = 1  # global only: reference frames; T > 1 or ref_5d gives [B, T, C, Hr, Wr]
    Hr: int | None = None
    Wr: int | None = None
    ref_5d: bool = False
    windows: tuple = (4, 8)  # local only
    layout: str = "contiguous"  # contiguous, channels_last, sliced, transposed, expanded
    absent: tuple = ()  # labels that never occur
    ignore: float = 0.1  # fraction of ignored pixels (255 and L + 1)
    skew: float | None = None  # label l drawn with weight skew**l (objects of very different sizes)
    label_dtype: str = "int64"
    seed: int = 0
    fg_bias: float = -0.3
    bg_bias: float = 0.2
    bias_shape: tuple = (1,)
    sigma: float = 0.1  # embeddings: sigma * randn + offset
    offset: float = 0.0  # the same constant added to query and candidates (||q - r|| unchanged)
    integer: bool = False  # embeddings drawn from {-1, 0, 1}: exact in every dtype, so many exact ties
    outlier: float = 0.0  # when set: one element (drawn from the seed) of outlier_in takes this value
    outlier_in: str = "reference"  # "query" or "reference" (the candidates)
    infinite: float = 0.0  # fraction of candidate elements set to +inf or -inf (random signs)
    name: str = ""  # why a hand-made case exists; it replaces the list of fields in the id

    @property
    def id(self) -> str:
        if self.name:
            return f"{self.op}-{self.name}"
        d = asdict(self)
        return "-".join(f"{k}{v}" for k, v in d.items() if v != Case.__dataclass_fields__[k].default or k == "op")


def in_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if layout == "channels_last" and not x.is_floating_point():
        return x  # labels have no channel dimension
    if layout == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "channels_last":  # [B, T, C, H, W]: C innermost
        return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    if layout == "sliced":  # every other element of a wider buffer
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
        wide[..., ::2] = x
        return wide[..., ::2]
    if layout == "transposed":  # every other column of a column-major buffer: no stride of the last two dims is 1
        wide = torch.full((*x.shape[:-2], 2 * x.shape[-1], x.shape[-2]), 7, dtype=x.dtype, device=x.device)
        view = wide.transpose(-1, -2)[..., ::2]
        view.copy_(x)
        return view
    return x  # contiguous; "expanded" views are made in inputs()


def _embeddings(case: Case, shape: tuple, g: torch.Generator) -> torch.Tensor:
    if case.integer:
        return torch.randint(-1, 2, shape, generator=g).to(torch.float64)
    return case.sigma * torch.randn(*shape, generator=g, dtype=torch.float64) + case.offset


def _labels(case: Case, shape: tuple, g: torch.Generator) -> torch.Tensor:
    """Labels in [0, L) (skewed if asked), `case.ignore` of them ignored (255 or L + 1), none of `case.absent`."""
    if case.skew is None or math.prod(shape) == 0:  # (multinomial cannot draw 0 samples)
        labels = torch.randint(0, case.L, shape, generator=g)
    else:
        weights = torch.tensor([case.skew**i for i in range(case.L)], dtype=torch.float64)
        labels = torch.multinomial(weights, math.prod(shape), True, generator=g).reshape(shape)
    u = torch.rand(shape, generator=g)
    labels[u < case.ignore / 2] = IGNORE
    labels[(u >= case.ignore / 2) & (u < case.ignore)] = case.L + 1
    for label in case.absent:
        labels[labels == label] = IGNORE
    return labels


def inputs(case: Case, dtype: torch.dtype, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a case: embeddings drawn in float64 (the same numbers for every dtype), labels with ignored
    pixels; in the case's layout. With layout 'expanded' the batch entries are copies of entry 0."""
    g = torch.Generator().manual_seed(case.seed)
    Hr = case.H if case.Hr is None else case.Hr
    Wr = case.W if case.Wr is None else case.Wr
    query = _embeddings(case, (case.B, case.C, case.H, case.W), g)
    if case.op == "global":
        cand = _embeddings(case, (case.B, case.T, case.C, Hr, Wr), g)
        label_shape = (case.B, case.T, Hr, Wr)
    else:
        cand = _embeddings(case, (case.B, case.C, case.H, case.W), g)
        label_shape = (case.B, case.H, case.W)
    target = query if case.outlier_in == "query" else cand
    if case.outlier and target.numel():
        target.view(-1)[(case.seed * 7919 + 13) % target.numel()] = case.outlier
    if case.infinite:
        u = torch.rand(cand.shape, generator=g, dtype=torch.float64)
        signs = torch.where(torch.rand(cand.shape, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
        cand = torch.where(u < case.infinite, signs * math.inf, cand)
    query, cand = query.to(dtype), cand.to(dtype)
    labels = _labels(case, label_shape, g)
    if case.layout == "expanded":  # batch entries sharing memory (batch stride 0)
        query, cand = query[:1].expand_as(query), cand[:1].expand_as(cand)
        labels = labels[:1].expand_as(labels).clone()
    if case.op == "global" and not (case.ref_5d or case.T > 1):
        cand, labels = cand[:, 0], labels[:, 0]
    labels = labels.clamp(max=255).to(getattr(torch, case.label_dtype))
    query, cand, labels = (in_layout(x.to(device), case.layout) for x in (query, cand, labels))
    return dict(
        query=query,
        candidates=cand,
        labels=labels,
        fg_bias=torch.full(case.bias_shape, case.fg_bias, dtype=dtype, device=device),
        bg_bias=torch.full(case.bias_shape, case.bg_bias, dtype=dtype, device=device),
    )


# The inputs a loss can be differentiated against, in the order of the ops' arguments.
LEAVES = ("query", "candidates", "fg_bias", "bg_bias")


def leaf_inputs(case: Case, dtype: torch.dtype, device: str = "cpu") -> dict[str, torch.Tensor]:
    """`inputs` with the LEAVES as fresh tensors that require grad."""
    x = inputs(case, dtype, device)
    return {k: v.detach().clone().requires_grad_() if k in LEAVES else v for k, v in x.items()}


def public_args(case: Case, x: dict) -> tuple[Callable, dict, dict]:
    """cfbi_ops.global_match or local_match for a case, its positional arguments by name and its keyword arguments."""
    names = ("query", "candidates", "labels")
    args = {**{k: x[k] for k in names}, "num_labels": case.L, "fg_bias": x["fg_bias"], "bg_bias": x["bg_bias"]}
    if case.op == "global":
        return cfbi_ops.global_match, args, dict(atrous=case.atrous, atrous_min_pixels=case.min_pixels)
    return cfbi_ops.local_match, args, dict(windows=case.windows, atrous=case.atrous)


def call(case: Case, x: dict, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The public function on a case's inputs (x from `inputs`); backend None: the process default."""
    fn, args, kwargs = public_args(case, x)
    return fn(*args.values(), **kwargs, backend=backend)


def call_function_class(case: Case, x: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """GlobalMatchFunction / LocalMatchFunction.apply on a case's inputs."""
    args = [x["query"], x["candidates"], x["labels"], case.L, x["fg_bias"], x["bg_bias"]]
    if case.op == "global":
        return cfbi_ops.GlobalMatchFunction.apply(*args, case.atrous, case.min_pixels)
    return cfbi_ops.LocalMatchFunction.apply(*args, case.windows, case.atrous)


def raw_args(case: Case, x: dict, ops=None) -> tuple[Callable, Callable, list]:
    """The raw forward op of a case (of torch.ops.cfbi, or of `ops`, e.g. torch.ops.cfbi_emu), its backward op
    and the forward's arguments (the reference and its labels canonical: 5-D, 4-D)."""
    ops = torch.ops.cfbi if ops is None else ops
    if case.op == "global":
        cand = x["candidates"] if x["candidates"].dim() == 5 else x["candidates"].unsqueeze(1)
        labels = x["labels"] if x["labels"].dim() == 4 else x["labels"].unsqueeze(1)
        args = [x["query"], cand, labels, case.L, x["fg_bias"], x["bg_bias"], case.atrous, case.min_pixels]
        return ops.global_match, ops.global_match_backward, args
    args = [x["query"], x["candidates"], x["labels"], case.L, x["fg_bias"], x["bg_bias"]]
    return ops.local_match, ops.local_match_backward, [*args, list(case.windows), case.atrous]


def backward_args(args: list, fg: torch.Tensor, argmin: torch.Tensor, grad_fg, grad_bg) -> list:
    """The raw backward op's arguments after the forward op ran on `args` (from raw_args) and gave fg, argmin."""
    return [grad_fg, grad_bg, fg, argmin, args[0], args[1], args[4], args[5]]


def first_and_second_derivatives(run: Callable, x: dict) -> list[torch.Tensor]:
    """With (fg, bg) = run(x): the gradients of a fixed loss w.r.t. x's LEAVES, then those of the squared norm of
    these gradients (second derivatives, through create_graph=True). An input a loss does not reach gets zeros."""
    leaves = [x[k] for k in LEAVES]
    fg, bg = run(x)
    w = torch.linspace(-1, 1, fg.numel(), dtype=fg.dtype, device=fg.device).reshape(fg.shape)
    loss = (fg * fg * w).sum() + (bg * w.flip(-1)).sum()
    first = grads(loss, leaves, create_graph=True)
    penalty = sum((g * g).sum() for g in first)
    second = grads(penalty, leaves) if penalty.requires_grad else [torch.zeros_like(t) for t in leaves]
    return [g.detach() for g in first] + second


def weighted_loss(fg: torch.Tensor, bg: torch.Tensor, seed: int = 123) -> torch.Tensor:
    """Random upstream weights on both outputs (fixed by seed, independent of the outputs' values and device)."""
    g = generator(seed)
    wf = torch.randn(fg.shape, generator=g, dtype=torch.float64).to(fg)
    wb = torch.randn(bg.shape, generator=g, dtype=torch.float64).to(bg)
    return (fg * wf).sum() + (bg * wb).sum()


def grads(loss: torch.Tensor, leaves, create_graph: bool = False) -> list[torch.Tensor]:
    """Gradients of loss w.r.t. leaves; an input the loss does not reach gets an explicit zero."""
    out = torch.autograd.grad(loss, leaves, allow_unused=True, create_graph=create_graph)
    return [torch.zeros_like(x) if gx is None else gx for x, gx in zip(leaves, out)]


def run_isolated(code: str, timeout: float = 120) -> subprocess.Popen:
    """Starts `code` in a fresh interpreter (for calls that may crash the process); returns the Popen."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture
def restore_threads():
    """Restores torch's intra-op thread count after a test that changes it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def single_thread():
    """One intra-op thread: tiny ops (gradcheck) stay fast when other processes load the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single_thread_module():
    """One intra-op thread for a whole module: tiny tensors gain nothing from intra-op threads, and
    busy-waiting OpenMP workers make such tests many times slower on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def restore_deterministic():
    mode = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(mode)


def tiny_train_args(data_root) -> list[str]:
    """`cfbi train` arguments at the smallest useful size on generated data (the small model, one clip of 2
    frames cropped to 65 pixels per step, no loader workers, one warm-up step); callers add their own options."""
    options = "--crop 65 --short-edge 0 --batch-size 1 --num-current 2 --workers 0 --warmup 1".split()
    return ["train", "--config", "small", "--data", str(data_root), *options]


# ------------------------------------------------------------------------------------------ training tests
def tiny_config(**overrides):
    """The TrainConfig of the training tests at the smallest useful size (the small model, 4 steps of one clip of
    2 frames cropped to 65 pixels, sequential from step 2, no loader workers), with `overrides`."""
    from cfbi_model.config import ClipConfig, TrainConfig, get_config

    base = dict(
        model=get_config("small"),
        steps=4,
        batch_size=1,
        lr=0.02,
        warmup_steps=1,
        sequential_start=2,
        hard_mining_steps=2,
        clip=ClipConfig(num_current=2, max_gap=2, crop_size=(65, 65), short_edge=None),
        num_workers=0,
        checkpoint_every=0,
        log_every=1,
        amp=False,
    )
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data_root(request, tmp_path_factory):
    """A generated DAVIS-2017 folder of 3 training and 1 validation video of 72 x 96 pixels, 8 to 10 frames and
    at most 2 objects, drawn with the seed the test module names as DATA_SEED (each module keeps its own data)."""
    from cfbi_model.data.synthetic import SyntheticConfig, write_synthetic_davis

    seed = request.module.DATA_SEED
    root = tmp_path_factory.mktemp(f"synthetic_seed{seed}")
    config = SyntheticConfig(height=72, width=96, num_frames=(8, 10), max_objects=2)
    write_synthetic_davis(root, num_train=3, num_val=1, seed=seed, config=config)
    return root


CMAKE = shutil.which("cmake", path=os.path.dirname(sys.executable)) or shutil.which("cmake")


@pytest.fixture(scope="session")
def cmake_build(tmp_path_factory) -> Path:
    """The project's CMake build for C++ users (CPU kernels, every example), configured against this torch and
    built once per session: libcfbi_ops.so, match_example, segment_video (where libtorch has the AOTInductor
    package loader)."""
    if CMAKE is None:
        pytest.skip("cmake not installed")
    build = tmp_path_factory.mktemp("cmake")
    # As the README's commands: CMakeLists.txt finds what a CUDA build of torch's config wants by itself.
    configure = [CMAKE, "-S", REPO_ROOT, "-B", str(build), "-DCFBI_WITH_CUDA=OFF"]
    configure.append(f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_CUDA_ARCH_LIST"}
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"
    for command in (configure, [CMAKE, "--build", str(build), "-j", "2"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return build
