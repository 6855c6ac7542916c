"""cfbi_ops.compat against the transcription of the authors' functions (tests/authors_matching.py): outputs,
gradients to the embeddings and to every element of dis_bias, and the in-place subsampling of the caller's
one-hot labels, over odd sizes, atrous rates, several reference frames, absent labels, atrous_obj_pixel_num,
ori_size, allow_downsample and per-label biases.

float64: tight. float32: values to 1e-5; gradients may differ at a near-tie, where the authors' expanded
distance ||q||^2 + ||r||^2 - 2 q.r orders two candidates a few ulp apart differently from the exact distance
and routes the gradient to the other one, so a small fraction of embedding-gradient entries may differ."""

from __future__ import annotations

import pytest
import torch
from conftest import embeddings, generator, random_labels, requires_cuda

import cfbi_ops
from cfbi_ops import compat
from tests import authors_matching as authors

pytestmark = pytest.mark.usefixtures("single_thread_module")

DTYPES = [torch.float64, torch.float32]
# (rtol, atol) of values and gradients per dtype.
VALUE_TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
GRAD_TOL = {torch.float64: 1e-11, torch.float32: 1e-4}
# Fraction of float32 embedding-gradient entries allowed to differ (near-ties, see the module docstring).
NEAR_TIE_FRACTION = 0.01


def one_hot(index: torch.Tensor, num_labels: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[H, W] labels -> [H, W, L] one-hot; values outside [0, L) give all-zero rows (no object)."""
    valid = (index >= 0) & (index < num_labels)
    out = torch.zeros(index.shape + (num_labels,), dtype=dtype)
    out[valid, index[valid]] = 1
    return out


def frame(height: int, width: int, channels: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    return embeddings((height, width, channels), dtype, g).requires_grad_()


def bias_values(num_labels: int, distinct: bool) -> list[float]:
    """Background 0.2; foreground -0.3 for all, or a different value per object (with 3+ objects, the last
    shares the first one's)."""
    if not distinct or num_labels < 3:
        return [0.2] + [-0.3] * (num_labels - 1)
    fg = [-0.3 + 0.15 * i for i in range(num_labels - 1)]
    if len(fg) >= 3:
        fg[-1] = fg[0]
    return [0.2] + fg


def make_bias(num_labels: int, dtype: torch.dtype, distinct: bool = False) -> torch.Tensor:
    return torch.tensor(bias_values(num_labels, distinct), dtype=dtype).reshape(-1, 1, 1, 1).requires_grad_()


def loss_of(out: torch.Tensor, seed: int = 7) -> torch.Tensor:
    weights = torch.randn(out.shape, generator=generator(seed), dtype=torch.float64).to(out.dtype)
    return (out * weights).sum()


def gradients(out: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    got = torch.autograd.grad(loss_of(out), leaves, allow_unused=True)
    return [torch.zeros_like(x) if gx is None else gx for x, gx in zip(leaves, got)]


def assert_parity(
    ours: torch.Tensor, theirs: torch.Tensor, leaves: list[torch.Tensor], dtype: torch.dtype, check_grads: bool = True
) -> None:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    tol = VALUE_TOL[dtype]
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)
    if not check_grads:
        return
    tol = GRAD_TOL[dtype]
    for i, (got, want) in enumerate(zip(gradients(ours, leaves), gradients(theirs, leaves))):
        if dtype == torch.float64 or got.dim() <= 1 or got.shape[0] <= 1 or i == len(leaves) - 1:
            torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=lambda m, i=i: f"leaf {i}: {m}")
        else:  # an embedding gradient in float32
            differs = ~torch.isclose(got, want, rtol=tol, atol=tol)
            assert differs.double().mean().item() <= NEAR_TIE_FRACTION, f"leaf {i}: {differs.sum()} entries differ"


# ---------------------------------------------------------------------------------------------------------------
# global_matching
# ---------------------------------------------------------------------------------------------------------------

GLOBAL_CASES = [
    # H, W, C, L, atrous_rate, atrous_obj_pixel_num, absent, ori_size, distinct biases
    (9, 11, 6, 3, 1, 0, (), None, False),
    (13, 7, 8, 4, 2, 0, (), None, True),
    (11, 13, 5, 5, 2, 3, (2,), (20, 17), True),
    (10, 15, 4, 2, 3, 1, (), None, False),
    (7, 9, 6, 1, 2, 0, (), (4, 5), False),
    (12, 9, 7, 4, 3, 0, (0, 3), None, True),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", GLOBAL_CASES, ids=lambda c: "-".join(map(str, c[:6])))
def test_global_matching(case: tuple, dtype: torch.dtype) -> None:
    height, width, channels, num_labels, rate, min_pixels, absent, ori_size, distinct = case
    g = generator(sum(case[:6]))
    query, reference = frame(height, width, channels, dtype, g), frame(height, width, channels, dtype, g)
    index = random_labels((height, width), num_labels, g, absent=absent, skew=0.3 if min_pixels else None)
    labels = one_hot(index, num_labels)
    bias = make_bias(num_labels, dtype, distinct)
    kwargs = dict(
        dis_bias=bias, ori_size=ori_size, atrous_rate=rate, use_float16=False, atrous_obj_pixel_num=min_pixels
    )
    ours_labels, their_labels = labels.clone(), labels.clone()
    ours = compat.global_matching(reference, query, ours_labels, **kwargs)
    theirs = authors.global_matching(reference, query, their_labels, n_chunks=3, **kwargs)
    size = ori_size or (height, width)
    assert ours.shape == (1, size[0], size[1], num_labels, 1)
    assert_parity(ours, theirs, [query, reference, bias], dtype)
    # The caller's labels are subsampled in place exactly as the original does it (untouched at rate 1).
    assert torch.equal(ours_labels, their_labels)
    assert torch.equal(ours_labels, labels) == (rate == 1)


def test_global_matching_keeps_small_objects_whole() -> None:
    """atrous_obj_pixel_num: an object of at most m * rate**2 pixels keeps all of them, a larger one only its
    pixels on the grid (checked on the labels left in place and on the scores)."""
    g = generator(3)
    height, width, channels = 12, 12, 4
    query, reference = (
        frame(height, width, channels, torch.float64, g),
        frame(height, width, channels, torch.float64, g),
    )
    index = torch.zeros(height, width, dtype=torch.long)
    index[1:4, 1:4] = 1  # 9 pixels <= 3 * 2**2: kept whole
    index[5:11, 5:11] = 2  # 36 pixels: subsampled
    labels = one_hot(index, 3)
    before = labels.clone()
    out = compat.global_matching(
        reference,
        query,
        labels,
        dis_bias=torch.zeros(3, 1, 1, 1, dtype=torch.float64),
        atrous_rate=2,
        use_float16=False,
        atrous_obj_pixel_num=3,
    )
    assert torch.equal(labels[..., 1], before[..., 1])
    on_grid = (torch.arange(height)[:, None] % 2 == 0) & (torch.arange(width)[None, :] % 2 == 0)
    assert torch.equal(labels[..., 2], before[..., 2] * on_grid)
    assert torch.equal(labels[..., 0], before[..., 0] * on_grid)
    theirs = authors.global_matching(
        reference,
        query,
        before.clone(),
        dis_bias=torch.zeros(3, 1, 1, 1, dtype=torch.float64),
        atrous_rate=2,
        use_float16=False,
        atrous_obj_pixel_num=3,
    )
    torch.testing.assert_close(out, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("switch", ["argument", "module"])
def test_in_place_side_effect_can_be_switched_off(switch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    g = generator(11)
    query, reference = frame(9, 10, 4, torch.float64, g), frame(9, 10, 4, torch.float64, g)
    labels = one_hot(random_labels((9, 10), 3, g), 3)
    bias = make_bias(3, torch.float64)
    default_labels = labels.clone()
    expected = compat.global_matching(reference, query, default_labels, dis_bias=bias, atrous_rate=2, use_float16=False)
    assert not torch.equal(default_labels, labels)  # the side effect is on by default
    untouched = labels.clone()
    if switch == "argument":
        out = compat.global_matching(
            reference, query, untouched, dis_bias=bias, atrous_rate=2, use_float16=False, inplace_labels=False
        )
    else:
        monkeypatch.setattr(compat, "INPLACE_LABELS", False)
        out = compat.global_matching(reference, query, untouched, dis_bias=bias, atrous_rate=2, use_float16=False)
    assert torch.equal(untouched, labels)
    assert torch.equal(out, expected)


def test_global_matching_without_candidates() -> None:
    """No labelled reference pixel: ones at the matching size, as the original (ori_size not applied)."""
    g = generator(5)
    query, reference = frame(6, 7, 4, torch.float64, g), frame(6, 7, 4, torch.float64, g)
    labels = torch.zeros(6, 7, 3)
    kwargs = dict(dis_bias=make_bias(3, torch.float64), ori_size=(12, 14), use_float16=False)
    ours = compat.global_matching(reference, query, labels.clone(), **kwargs)
    theirs = authors.global_matching(reference, query, labels.clone(), **kwargs)
    assert ours.shape == theirs.shape == (1, 6, 7, 3, 1) and ours.dtype == theirs.dtype
    assert torch.equal(ours, theirs)


def test_global_matching_different_reference_size() -> None:
    """atrous_rate 1 allows a reference frame of another size (C equal)."""
    g = generator(8)
    query, reference = frame(7, 9, 5, torch.float64, g), frame(11, 6, 5, torch.float64, g)
    labels = one_hot(random_labels((11, 6), 3, g), 3)
    bias = make_bias(3, torch.float64)
    ours = compat.global_matching(reference, query, labels.clone(), dis_bias=bias, use_float16=False)
    theirs = authors.global_matching(reference, query, labels.clone(), dis_bias=bias, use_float16=False)
    assert_parity(ours, theirs, [query, reference, bias], torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# global_matching_for_eval
# ---------------------------------------------------------------------------------------------------------------

EVAL_CASES = [
    # frames, H, W, C, L, atrous_rate, atrous_obj_pixel_num, absent, ori_size, distinct biases
    (1, 9, 11, 5, 3, 2, 0, (), None, False),
    (2, 11, 13, 6, 4, 2, 0, (1,), (15, 15), True),
    (3, 10, 9, 4, 3, 2, 2, (), None, False),
    (2, 13, 12, 5, 5, 3, 1, (3,), None, True),
    (2, 8, 9, 4, 3, 1, 5, (), None, False),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", EVAL_CASES, ids=lambda c: "-".join(map(str, c[:7])))
def test_global_matching_for_eval(case: tuple, dtype: torch.dtype) -> None:
    frames, height, width, channels, num_labels, rate, min_pixels, absent, ori_size, distinct = case
    g = generator(sum(case[:7]))
    query = frame(height, width, channels, dtype, g)
    references = [frame(height, width, channels, dtype, g) for _ in range(frames)]
    labels = [
        one_hot(random_labels((height, width), num_labels, g, absent=absent, skew=0.4), num_labels)
        for _ in range(frames)
    ]
    bias = make_bias(num_labels, dtype, distinct)
    kwargs = dict(
        dis_bias=bias, ori_size=ori_size, atrous_rate=rate, use_float16=False, atrous_obj_pixel_num=min_pixels
    )
    ours_labels, their_labels = [x.clone() for x in labels], [x.clone() for x in labels]
    ours = compat.global_matching_for_eval(references, query, ours_labels, **kwargs)
    theirs = authors.global_matching_for_eval(references, query, their_labels, n_chunks=2, **kwargs)
    assert_parity(ours, theirs, [query, *references, bias], dtype)
    for mine, their, original in zip(ours_labels, their_labels, labels):
        assert torch.equal(mine, their)
        if rate == 1 or min_pixels == 0:  # the original's strided path leaves the labels alone
            assert torch.equal(mine, original)
    if rate > 1 and min_pixels > 0:
        assert any(not torch.equal(mine, original) for mine, original in zip(ours_labels, labels))


# ---------------------------------------------------------------------------------------------------------------
# local_matching
# ---------------------------------------------------------------------------------------------------------------

LOCAL_CASES = [
    # H, W, C, L, windows, atrous_rate, allow_downsample, ori_size, absent, distinct biases
    (9, 11, 6, 3, [2, 4, 6], 1, False, None, (), False),
    (13, 10, 5, 4, [4, 8, 12], 2, False, None, (1,), True),
    (11, 13, 4, 3, [1, 3], 1, True, None, (), True),
    (12, 9, 6, 5, [3, 5], 2, True, (15, 11), (4,), True),
    (10, 12, 4, 2, [1, 2, 4], 2, False, (16, 20), (), False),
    (8, 7, 5, 1, [15], 1, False, None, (), False),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", LOCAL_CASES, ids=lambda c: "-".join(map(str, c[:7])).replace(" ", ""))
def test_local_matching(case: tuple, dtype: torch.dtype) -> None:
    height, width, channels, num_labels, windows, rate, downsample, ori_size, absent, distinct = case
    g = generator(height * width + num_labels)
    query, previous = frame(height, width, channels, dtype, g), frame(height, width, channels, dtype, g)
    labels = one_hot(random_labels((height, width), num_labels, g, absent=absent), num_labels)
    bias = make_bias(num_labels, dtype, distinct)
    kwargs = dict(
        dis_bias=bias,
        multi_local_distance=windows,
        ori_size=ori_size,
        atrous_rate=rate,
        use_float16=False,
        allow_downsample=downsample,
    )
    ours_labels = labels.clone()
    ours = compat.local_matching(previous, query, ours_labels, **kwargs)
    theirs = authors.local_matching(previous, query, labels.clone(), **kwargs)
    size = ori_size or (height, width)
    assert ours.shape == (1, size[0], size[1], num_labels, len(windows))
    assert_parity(ours, theirs, [query, previous, bias], dtype)
    assert torch.equal(ours_labels, labels)


def test_local_matching_window_order_and_allow_parallel() -> None:
    """The largest (last) window comes first, then the others in their order; allow_parallel changes nothing."""
    g = generator(21)
    query, previous = frame(10, 11, 4, torch.float64, g), frame(10, 11, 4, torch.float64, g)
    labels = one_hot(random_labels((10, 11), 3, g), 3)
    out = compat.local_matching(
        previous,
        query,
        labels,
        dis_bias=make_bias(3, torch.float64),
        multi_local_distance=[1, 2, 5],
        use_float16=False,
        allow_downsample=False,
    )
    loop = compat.local_matching(
        previous,
        query,
        labels,
        dis_bias=make_bias(3, torch.float64),
        multi_local_distance=[1, 2, 5],
        use_float16=False,
        allow_downsample=False,
        allow_parallel=False,
    )
    assert torch.equal(out, loop)
    to_op = lambda t: t.detach().permute(2, 0, 1).unsqueeze(0)  # noqa: E731
    index = labels.argmax(-1).masked_fill(labels.sum(-1) == 0, 3).unsqueeze(0)
    fg, _ = cfbi_ops.local_match(
        to_op(query),
        to_op(previous),
        index,
        3,
        torch.tensor(-0.3, dtype=torch.float64),
        torch.tensor(0.2, dtype=torch.float64),
        windows=(5, 1, 2),
    )
    torch.testing.assert_close(out.detach()[0].permute(2, 3, 0, 1), fg[0], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# dis_bias, float16, foreground2background
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", ["global", "local"])
def test_cfbi_bias_parameters_get_their_gradient(fn: str) -> None:
    """CFBI's dis_bias = cat([bg_bias, fg_bias.expand(L - 1)]): both parameters get the original's gradient;
    a number and a one-element tensor work as one bias for every label."""
    g = generator(31)
    query, other = frame(9, 8, 4, torch.float64, g), frame(9, 8, 4, torch.float64, g)
    labels = one_hot(random_labels((9, 8), 4, g), 4)
    results = []
    for module in (compat, authors):
        bg = torch.full((1, 1, 1, 1), 0.25, dtype=torch.float64, requires_grad=True)
        fg = torch.full((1, 1, 1, 1), -0.4, dtype=torch.float64, requires_grad=True)
        dis_bias = torch.cat([bg, fg.expand(3, -1, -1, -1)])
        if fn == "global":
            out = module.global_matching(
                other, query, labels.clone(), dis_bias=dis_bias, atrous_rate=2, use_float16=False
            )
        else:
            out = module.local_matching(
                other,
                query,
                labels.clone(),
                dis_bias=dis_bias,
                multi_local_distance=[2, 4],
                use_float16=False,
                allow_downsample=False,
            )
        results.append((out, *torch.autograd.grad(loss_of(out), [bg, fg])))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)
    for bias in (-0.1, torch.tensor([-0.1], dtype=torch.float64)):
        call = compat.global_matching if fn == "global" else compat.local_matching
        kwargs = dict(use_float16=False) if fn == "global" else dict(use_float16=False, allow_downsample=False)
        same = call(other, query, labels.clone(), dis_bias=bias, **kwargs)
        full = call(other, query, labels.clone(), dis_bias=torch.full((4,), -0.1, dtype=torch.float64), **kwargs)
        assert torch.equal(same, full)


@pytest.mark.parametrize("fn", ["global", "eval", "local"])
def test_use_float16(fn: str) -> None:
    """use_float16=True: embeddings rounded to float16, float32 result; the original computes its expanded
    distance in float16 as well, so the values agree to float16 precision."""
    g = generator(41)
    query, other = frame(11, 10, 8, torch.float32, g), frame(11, 10, 8, torch.float32, g)
    labels = one_hot(random_labels((11, 10), 3, g), 3)
    bias = make_bias(3, torch.float32)
    outs = []
    for module in (compat, authors):
        if fn == "global":
            out = module.global_matching(other, query, labels.clone(), dis_bias=bias, atrous_rate=2)
        elif fn == "eval":
            out = module.global_matching_for_eval([other], query, [labels.clone()], dis_bias=bias, atrous_rate=2)
        else:
            out = module.local_matching(other, query, labels.clone(), dis_bias=bias, multi_local_distance=[2, 4])
        outs.append(out)
    assert outs[0].dtype == outs[1].dtype == torch.float32
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=2e-3)
    (gq,) = torch.autograd.grad(loss_of(outs[0]), [query])
    assert gq.dtype == torch.float32 and gq.abs().sum() > 0


def test_result_dtype_follows_the_original() -> None:
    """float64 embeddings with a float32 bias give float64, as the original's type promotion does."""
    g = generator(43)
    query, other = frame(6, 6, 4, torch.float64, g), frame(6, 6, 4, torch.float64, g)
    labels = one_hot(random_labels((6, 6), 2, g), 2)
    bias = torch.tensor([0.1, -0.2]).reshape(2, 1, 1, 1)
    ours = compat.global_matching(other, query, labels.clone(), dis_bias=bias, use_float16=False)
    theirs = authors.global_matching(other, query, labels.clone(), dis_bias=bias, use_float16=False)
    assert ours.dtype == theirs.dtype == torch.float64
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 1, 5, 6), (3, 1, 5, 6, 4), (2, 3, 5, 6), (11, 2, 4, 5), (1, 1, 4, 4)])
def test_foreground2background(shape: tuple) -> None:
    """Values and gradients of the original, ties included (values drawn from a few levels)."""
    g = generator(51)
    dis = (torch.randint(0, 4, shape, generator=g).double() / 4).requires_grad_()
    obj_num = shape[0]
    ours, theirs = compat.foreground2background(dis, obj_num), authors.foreground2background(dis, obj_num)
    assert ours.shape == theirs.shape
    assert torch.equal(ours, theirs)
    # The same entries receive the gradient; only the order of summing several contributions differs.
    for got, want in zip(gradients(ours, [dis]), gradients(theirs, [dis])):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------


def test_errors_name_the_argument() -> None:
    g = generator(61)
    query, other = frame(6, 7, 4, torch.float32, g), frame(6, 7, 4, torch.float32, g)
    labels = one_hot(random_labels((6, 7), 3, g), 3)
    soft = labels * 0.5
    two_hot = labels.clone()
    two_hot[0, 0] = 1
    with pytest.raises(ValueError, match="reference_labels must be one-hot"):
        compat.global_matching(other, query, soft)
    with pytest.raises(ValueError, match="prev_frame_labels must be one-hot"):
        compat.local_matching(other, query, two_hot)
    before = labels.clone()
    with pytest.raises(ValueError, match="dis_bias must hold 1 or 3"):
        compat.global_matching(other, query, labels, dis_bias=torch.zeros(2), atrous_rate=2)
    assert torch.equal(labels, before)  # checked before the in-place subsampling
    with pytest.raises(ValueError, match="channels"):
        compat.global_matching(other[..., :3], query, labels)
    with pytest.raises(ValueError, match="atrous_rate > 1 needs"):
        compat.global_matching(other[:4], query, labels[:4], atrous_rate=2)
    with pytest.raises(ValueError, match="atrous_rate must be"):
        compat.local_matching(other, query, labels, atrous_rate=0)
    with pytest.raises(ValueError, match="the last window must be the largest"):
        compat.local_matching(other, query, labels, multi_local_distance=[4, 2])
    with pytest.raises(ValueError, match="prev_frame_labels must have the matching size"):
        compat.local_matching(other, query, labels[:5], allow_downsample=False)
    with pytest.raises(ValueError, match="all_reference_embeddings must have one spatial size"):
        compat.global_matching_for_eval([other, other[:5]], query, [labels, labels[:5]])
    with pytest.raises(ValueError, match="obj_num"):
        compat.foreground2background(torch.zeros(2, 1, 3, 3), 3)


# ---------------------------------------------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("fn", ["global", "eval", "local"])
def test_cuda_matches_the_original(fn: str) -> None:
    g = generator(71)
    cpu = [frame(12, 13, 8, torch.float32, g) for _ in range(2)]
    labels = one_hot(random_labels((12, 13), 4, g), 4)
    bias = make_bias(4, torch.float32, distinct=True)
    query, other = (x.detach().cuda().requires_grad_() for x in cpu)
    if fn == "global":
        ours = compat.global_matching(
            other, query, labels.cuda(), dis_bias=bias.cuda(), atrous_rate=2, use_float16=False
        )
        theirs = authors.global_matching(
            cpu[1], cpu[0], labels.clone(), dis_bias=bias, atrous_rate=2, use_float16=False
        )
    elif fn == "eval":
        ours = compat.global_matching_for_eval(
            [other],
            query,
            [labels.cuda()],
            dis_bias=bias.cuda(),
            atrous_rate=2,
            use_float16=False,
            atrous_obj_pixel_num=2,
        )
        theirs = authors.global_matching_for_eval(
            [cpu[1]], cpu[0], [labels.clone()], dis_bias=bias, atrous_rate=2, use_float16=False, atrous_obj_pixel_num=2
        )
    else:
        ours = compat.local_matching(
            other,
            query,
            labels.cuda(),
            dis_bias=bias.cuda(),
            multi_local_distance=[2, 4],
            atrous_rate=2,
            use_float16=False,
            allow_downsample=False,
        )
        theirs = authors.local_matching(
            cpu[1],
            cpu[0],
            labels.clone(),
            dis_bias=bias,
            multi_local_distance=[2, 4],
            atrous_rate=2,
            use_float16=False,
            allow_downsample=False,
        )
    assert ours.is_cuda
    torch.testing.assert_close(ours.cpu(), theirs, rtol=1e-5, atol=1e-5)
    for got, want in zip(gradients(ours, [query, other]), gradients(theirs, cpu)):
        differs = ~torch.isclose(got.cpu(), want, rtol=1e-4, atol=1e-4)
        assert differs.double().mean().item() <= NEAR_TIE_FRACTION


# ---------------------------------------------------------------------------------------------------------------
# The argument types of the authors' network
# ---------------------------------------------------------------------------------------------------------------


def _integer_kinds(value: int, cuda: bool = False) -> list:
    """value as each integer type the authors' network passes: a Python int, numpy integers and 0-d integer
    tensors (theirs come from batch tensors, e.g. obj_num = obj_nums[n], on the CPU or on the GPU)."""
    import numpy as np

    kinds = [
        value,
        np.int64(value),
        np.int32(value),
        torch.tensor(value),
        torch.tensor([value, 0], dtype=torch.int32)[0],
    ]
    if cuda:
        kinds.append(torch.tensor(value, device="cuda"))
    return kinds


def _network_step(obj_num, atrous_rate, min_pixels, windows, ori_size, flag) -> list[torch.Tensor]:
    """One frame of the authors' CFBI+ head as it calls the matching functions (networks/cfbi/cfbip.py; README,
    "Using cfbi_ops in a CFBI-based codebase"): keyword arguments, channels-last embeddings, one-hot labels over
    torch.arange(0, obj_num + 1), dis_bias = cat([bg_bias, fg_bias.expand(obj_num, ...)]), ori_size from a
    tensor's size(), then foreground2background(dis, obj_num + 1)."""
    g = generator(71)
    height, width, channels = 9, 10, 6
    current, previous, ref = (frame(height, width, channels, torch.float32, g) for _ in range(3))
    index = random_labels((height, width), 3, g)
    labels = (index.unsqueeze(-1) == torch.arange(0, obj_num + 1).view(1, 1, -1)).float()
    bg_bias, fg_bias = torch.full((1, 1, 1, 1), 0.2), torch.full((1, 1, 1, 1), -0.3)
    dis_bias = torch.cat([bg_bias, fg_bias.expand(obj_num, -1, -1, -1)], dim=0)
    global_fg = compat.global_matching(
        reference_embeddings=ref,
        query_embeddings=current,
        reference_labels=labels.clone(),
        n_chunks=flag + 19,
        dis_bias=dis_bias,
        ori_size=ori_size,
        atrous_rate=atrous_rate,
        use_float16=flag,
        atrous_obj_pixel_num=min_pixels,
    )
    eval_fg = compat.global_matching_for_eval(
        all_reference_embeddings=[ref, previous],
        query_embeddings=current,
        all_reference_labels=[labels.clone(), labels.clone()],
        n_chunks=flag + 19,
        dis_bias=dis_bias,
        ori_size=ori_size,
        atrous_rate=atrous_rate,
        use_float16=flag,
        atrous_obj_pixel_num=min_pixels,
    )
    local_fg = compat.local_matching(
        prev_frame_embedding=previous,
        query_embedding=current,
        prev_frame_labels=labels,
        multi_local_distance=windows,
        dis_bias=dis_bias,
        ori_size=ori_size,
        atrous_rate=atrous_rate,
        use_float16=flag,
        allow_downsample=flag,
        allow_parallel=flag,
    )
    out = []
    for dis in (global_fg, eval_fg, local_fg):
        dis = dis[0].permute(2, 3, 0, 1)  # [L, K, H', W'], as their head arranges it
        out += [dis, compat.foreground2background(dis, obj_num + 1)]
    return out


@pytest.mark.parametrize("cuda", [False, pytest.param(True, marks=requires_cuda)])
def test_argument_types_of_the_authors_network(cuda: bool) -> None:
    """Their network stopped at the first frame: obj_num is a 0-d integer tensor there, and compat refused it
    (issue 21). Every integer argument accepts ints, numpy integers and 0-d integer tensors (CPU or CUDA), every
    flag bools, numpy bools and 0-d tensors, ori_size a torch.Size or tensor elements; the results are those of
    plain ints."""
    import numpy as np

    want = _network_step(3, 2, 1, [2, 4], (9, 10), True)
    flags = [np.bool_(True), torch.tensor(True), 1]
    for obj_num, rate, min_pixels, window, flag in zip(
        _integer_kinds(3, cuda),
        _integer_kinds(2, cuda),
        _integer_kinds(1, cuda),
        _integer_kinds(4, cuda),
        flags * 3,
    ):
        size = torch.zeros(1, 1, 9, 10).size()[2:]
        got = _network_step(obj_num, rate, min_pixels, [2, window], size, flag)
        for a, b in zip(got, want):
            assert torch.equal(a, b), f"{type(obj_num).__name__} / {type(flag).__name__}"
    sizes = torch.tensor([9, 10])
    got = _network_step(3, 2, 1, [2, 4], (sizes[0], sizes[1]), True)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_non_integers_are_still_refused() -> None:
    dis = torch.zeros(3, 1, 4, 4)
    for bad in (True, 2.0, torch.tensor(2.0), torch.tensor([2]), torch.tensor(True), "2"):
        with pytest.raises(ValueError, match="obj_num"):
            compat.foreground2background(dis, bad)
