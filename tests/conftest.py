"""Shared helpers of the cfbi_ops tests: skip markers, tolerances and random case builders.

Embeddings are small (0.1 * randn): with unit-variance embeddings the squared distances are ~2C and
the score 1 - 2 / (1 + exp(d + b)) saturates to 1 (no gradient), which would hide most bugs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

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


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """A non-contiguous view holding the same values as t: every other element of a wider last dim,
    viewed through a transposed buffer (so neither the channel nor the pixel stride is 1)."""
    shape = list(t.shape)
    wide = shape[:-1] + [2 * shape[-1]]
    buf = torch.full(wide, 7, dtype=t.dtype)  # garbage in the gaps
    buf = buf.transpose(-1, -2).contiguous().transpose(-1, -2)
    view = buf[..., ::2]
    view.copy_(t)
    assert not view.is_contiguous()
    return view


def make_bias(value: float, dtype, shape=(1,), requires_grad: bool = True) -> torch.Tensor:
    return torch.full(shape, value, dtype=dtype).requires_grad_(requires_grad)


@dataclass
class GlobalCase:
    query: torch.Tensor
    reference: torch.Tensor  # [B, C, Hr, Wr] or [B, T, C, Hr, Wr]
    labels: torch.Tensor
    num_labels: int
    fg_bias: torch.Tensor
    bg_bias: torch.Tensor
    atrous: int = 1
    atrous_min_pixels: int = 0
    absent: tuple = field(default_factory=tuple)

    def kwargs(self):
        return dict(atrous=self.atrous, atrous_min_pixels=self.atrous_min_pixels)

    def leaves(self):
        return [self.query, self.reference, self.fg_bias, self.bg_bias]


@dataclass
class LocalCase:
    query: torch.Tensor
    previous: torch.Tensor
    labels: torch.Tensor
    num_labels: int
    fg_bias: torch.Tensor
    bg_bias: torch.Tensor
    windows: tuple = (4, 8, 12, 16, 20, 24)
    atrous: int = 1
    absent: tuple = field(default_factory=tuple)

    def kwargs(self):
        return dict(windows=self.windows, atrous=self.atrous)

    def leaves(self):
        return [self.query, self.previous, self.fg_bias, self.bg_bias]


def make_global_case(
    *,
    B=1,
    C=4,
    H=6,
    W=7,
    T=1,
    Hr=None,
    Wr=None,
    L=3,
    atrous=1,
    min_pixels=0,
    absent=(),
    dtype=torch.float64,
    ref_5d=None,
    noncontig=False,
    label_dtype=torch.int64,
    seed=0,
    fg_bias=-0.3,
    bg_bias=0.2,
    bias_shape=(1,),
    requires_grad=True,
    skew=None,
) -> GlobalCase:
    Hr = H if Hr is None else Hr
    Wr = W if Wr is None else Wr
    ref_5d = (T > 1) if ref_5d is None else ref_5d
    assert ref_5d or T == 1
    g = generator(seed)
    query = embeddings((B, C, H, W), dtype, g)
    reference = embeddings((B, T, C, Hr, Wr), dtype, g)
    labels = random_labels((B, T, Hr, Wr), L, g, absent=absent, dtype=label_dtype, skew=skew)
    if not ref_5d:
        reference, labels = reference[:, 0], labels[:, 0]
    if noncontig:
        query, reference, labels = noncontiguous(query), noncontiguous(reference), noncontiguous(labels)
    query.requires_grad_(requires_grad)
    reference.requires_grad_(requires_grad)
    return GlobalCase(
        query,
        reference,
        labels,
        L,
        make_bias(fg_bias, dtype, bias_shape, requires_grad),
        make_bias(bg_bias, dtype, bias_shape, requires_grad),
        atrous,
        min_pixels,
        tuple(absent),
    )


def make_local_case(
    *,
    B=1,
    C=4,
    H=6,
    W=7,
    L=3,
    windows=(4, 8, 12, 16, 20, 24),
    atrous=1,
    absent=(),
    dtype=torch.float64,
    noncontig=False,
    label_dtype=torch.int64,
    seed=0,
    fg_bias=-0.3,
    bg_bias=0.2,
    bias_shape=(1,),
    requires_grad=True,
) -> LocalCase:
    g = generator(seed)
    query = embeddings((B, C, H, W), dtype, g)
    previous = embeddings((B, C, H, W), dtype, g)
    labels = random_labels((B, H, W), L, g, absent=absent, dtype=label_dtype)
    if noncontig:
        query, previous, labels = noncontiguous(query), noncontiguous(previous), noncontiguous(labels)
    query.requires_grad_(requires_grad)
    previous.requires_grad_(requires_grad)
    return LocalCase(
        query,
        previous,
        labels,
        L,
        make_bias(fg_bias, dtype, bias_shape, requires_grad),
        make_bias(bg_bias, dtype, bias_shape, requires_grad),
        tuple(windows),
        atrous,
        tuple(absent),
    )


def run_global(case: GlobalCase, impl=None):
    impl = cfbi_ops.global_match if impl is None else impl
    return impl(case.query, case.reference, case.labels, case.num_labels, case.fg_bias, case.bg_bias, **case.kwargs())


def run_local(case: LocalCase, impl=None):
    impl = cfbi_ops.local_match if impl is None else impl
    return impl(case.query, case.previous, case.labels, case.num_labels, case.fg_bias, case.bg_bias, **case.kwargs())


def weighted_loss(fg: torch.Tensor, bg: torch.Tensor, seed: int = 123) -> torch.Tensor:
    """Random upstream weights on both outputs (fixed by seed, independent of the outputs' values and device)."""
    g = generator(seed)
    wf = torch.randn(fg.shape, generator=g, dtype=torch.float64).to(fg)
    wb = torch.randn(bg.shape, generator=g, dtype=torch.float64).to(bg)
    return (fg * wf).sum() + (bg * wb).sum()


def grads(loss: torch.Tensor, leaves) -> list[torch.Tensor]:
    """Gradients of loss w.r.t. leaves; an input the loss does not reach gets an explicit zero."""
    out = torch.autograd.grad(loss, leaves, allow_unused=True)
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
