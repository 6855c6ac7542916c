"""Bad input: every documented error case raises ValueError / RuntimeError whose message names the
argument, and direct calls of the raw torch.ops.cfbi ops with bad shapes raise RuntimeError instead of
crashing (the risky ones run in a separate interpreter so that a crash cannot take the suite down)."""

from __future__ import annotations

import textwrap

import pytest
import torch
from conftest import embeddings, generator, random_labels, requires_extension, run_isolated

import cfbi_ops

ERRORS = (ValueError, RuntimeError)


def _global_inputs(dtype=torch.float32):
    g = generator(70)
    return dict(
        query=embeddings((2, 4, 5, 6), dtype, g),
        reference=embeddings((2, 4, 6, 5), dtype, g),
        ref_labels=random_labels((2, 6, 5), 3, g),
        num_labels=3,
        fg_bias=torch.zeros(1, dtype=dtype),
        bg_bias=torch.zeros(1, dtype=dtype),
    )


def _local_inputs(dtype=torch.float32):
    g = generator(71)
    return dict(
        query=embeddings((2, 4, 5, 6), dtype, g),
        previous=embeddings((2, 4, 5, 6), dtype, g),
        prev_labels=random_labels((2, 5, 6), 3, g),
        num_labels=3,
        fg_bias=torch.zeros(1, dtype=dtype),
        bg_bias=torch.zeros(1, dtype=dtype),
    )


def test_valid_inputs_do_not_raise():
    """The unmodified inputs of the cases below are valid (so each error comes from the one change)."""
    fg, _ = cfbi_ops.global_match(**_global_inputs(), atrous=2, atrous_min_pixels=1)
    assert fg.shape == (2, 3, 5, 6)
    fg, _ = cfbi_ops.local_match(**_local_inputs(), windows=(0, 2), atrous=2)
    assert fg.shape == (2, 3, 2, 5, 6)


# name: (argument that must be named in the message, change applied to the valid inputs / kwargs)
GLOBAL_ERRORS = {
    "query-3d": ("query", lambda a, k: a.update(query=a["query"][0])),
    "query-5d": ("query", lambda a, k: a.update(query=a["query"][None])),
    "reference-3d": ("reference", lambda a, k: a.update(reference=a["reference"][0])),
    "reference-6d": ("reference", lambda a, k: a.update(reference=a["reference"][None, None])),
    "labels-2d": ("ref_labels", lambda a, k: a.update(ref_labels=a["ref_labels"][0])),
    "labels-4d-for-4d-reference": ("ref_labels", lambda a, k: a.update(ref_labels=a["ref_labels"][:, None])),
    "labels-float": ("ref_labels", lambda a, k: a.update(ref_labels=a["ref_labels"].float())),
    "labels-bool": ("ref_labels", lambda a, k: a.update(ref_labels=a["ref_labels"] > 0)),
    "labels-shape": ("ref_labels", lambda a, k: a.update(ref_labels=a["ref_labels"][:, :-1])),
    "labels-batch": ("ref_labels", lambda a, k: a.update(ref_labels=a["ref_labels"][:1])),
    "dtype-mismatch": ("reference", lambda a, k: a.update(reference=a["reference"].double())),
    "query-int": ("query", lambda a, k: a.update(query=a["query"].long())),
    "channel-mismatch": ("reference", lambda a, k: a.update(reference=a["reference"][:, :3])),
    "batch-mismatch": (
        "reference",
        lambda a, k: a.update(reference=a["reference"][:1], ref_labels=a["ref_labels"][:1]),
    ),
    "atrous-0": ("atrous", lambda a, k: k.update(atrous=0)),
    "atrous-negative": ("atrous", lambda a, k: k.update(atrous=-2)),
    "min-pixels-negative": ("atrous_min_pixels", lambda a, k: k.update(atrous_min_pixels=-1)),
    "num-labels-0": ("num_labels", lambda a, k: a.update(num_labels=0)),
    "num-labels-negative": ("num_labels", lambda a, k: a.update(num_labels=-3)),
    "fg-bias-2": ("fg_bias", lambda a, k: a.update(fg_bias=torch.zeros(2))),
    "bg-bias-2": ("bg_bias", lambda a, k: a.update(bg_bias=torch.zeros(1, 2))),
    "bg-bias-empty": ("bg_bias", lambda a, k: a.update(bg_bias=torch.zeros(0))),
}


@pytest.mark.parametrize("name", list(GLOBAL_ERRORS))
def test_global_match_errors(name):
    argument, change = GLOBAL_ERRORS[name]
    args, kwargs = _global_inputs(), dict(atrous=1, atrous_min_pixels=0)
    change(args, kwargs)
    with pytest.raises(ERRORS, match=argument):
        cfbi_ops.global_match(**args, **kwargs)


LOCAL_ERRORS = {
    "query-3d": ("query", lambda a, k: a.update(query=a["query"][0], previous=a["previous"][0])),
    "previous-3d": ("previous", lambda a, k: a.update(previous=a["previous"][0])),
    "previous-shape": ("previous", lambda a, k: a.update(previous=a["previous"][..., :-1])),
    "labels-2d": ("prev_labels", lambda a, k: a.update(prev_labels=a["prev_labels"][0])),
    "labels-float": ("prev_labels", lambda a, k: a.update(prev_labels=a["prev_labels"].double())),
    "labels-shape": ("prev_labels", lambda a, k: a.update(prev_labels=a["prev_labels"][:, 1:])),
    "dtype-mismatch": ("previous", lambda a, k: a.update(previous=a["previous"].double())),
    "channel-mismatch": ("previous", lambda a, k: a.update(previous=a["previous"][:, :2])),
    "batch-mismatch": ("previous", lambda a, k: a.update(previous=a["previous"][:1])),
    "atrous-0": ("atrous", lambda a, k: k.update(atrous=0)),
    "windows-empty": ("windows", lambda a, k: k.update(windows=())),
    "windows-negative": ("windows", lambda a, k: k.update(windows=(4, -1))),
    "windows-int": ("windows", lambda a, k: k.update(windows=4)),
    "num-labels-0": ("num_labels", lambda a, k: a.update(num_labels=0)),
    "fg-bias-2": ("fg_bias", lambda a, k: a.update(fg_bias=torch.zeros(2))),
    "bg-bias-2": ("bg_bias", lambda a, k: a.update(bg_bias=torch.zeros(2, 1))),
}


@pytest.mark.parametrize("name", list(LOCAL_ERRORS))
def test_local_match_errors(name):
    argument, change = LOCAL_ERRORS[name]
    args, kwargs = _local_inputs(), dict(windows=(4, 8), atrous=1)
    change(args, kwargs)
    with pytest.raises(ERRORS, match=argument):
        cfbi_ops.local_match(**args, **kwargs)


def test_function_apply_validates_too():
    args = _global_inputs()
    with pytest.raises(ERRORS, match="atrous"):
        cfbi_ops.GlobalMatchFunction.apply(*args.values(), 0, 0)
    with pytest.raises(ERRORS, match="fg_bias"):
        cfbi_ops.GlobalMatchFunction.apply(*list(args.values())[:4], torch.zeros(3), torch.zeros(1))
    args = _local_inputs()
    with pytest.raises(ERRORS, match="windows"):
        cfbi_ops.LocalMatchFunction.apply(*args.values(), [], 1)
    with pytest.raises(ERRORS, match="previous"):
        cfbi_ops.LocalMatchFunction.apply(args["query"], args["previous"][:, :2], *list(args.values())[2:])


# --------------------------------------------------------------------------------------------------
# Raw ops called directly with bad arguments: RuntimeError, no crash
# --------------------------------------------------------------------------------------------------


def _canonical_global():
    a = _global_inputs()
    return [a["query"], a["reference"][:, None], a["ref_labels"][:, None], 3, a["fg_bias"], a["bg_bias"], 1, 0]


def _canonical_local():
    a = _local_inputs()
    return [a["query"], a["previous"], a["prev_labels"], 3, a["fg_bias"], a["bg_bias"], [4, 8], 1]


RAW_FORWARD_ERRORS = {
    "global-reference-4d": ("global", 1, lambda x: x[0]),
    "global-labels-3d": ("global", 2, lambda x: x[:, 0]),
    "global-labels-shape": ("global", 2, lambda x: x[..., :-1]),
    "global-labels-float": ("global", 2, lambda x: x.float()),
    "global-query-3d": ("global", 0, lambda x: x[0]),
    "global-channels": ("global", 1, lambda x: x[:, :, :2]),
    "global-batch": ("global", 1, lambda x: x[:1]),
    "global-dtype": ("global", 1, lambda x: x.double()),
    "global-num-labels": ("global", 3, lambda x: 0),
    "global-atrous": ("global", 6, lambda x: 0),
    "global-min-pixels": ("global", 7, lambda x: -1),
    "global-bias": ("global", 4, lambda x: torch.zeros(2)),
    "local-previous-shape": ("local", 1, lambda x: x[..., :-1]),
    "local-labels-shape": ("local", 2, lambda x: x[:, :-1]),
    "local-labels-float": ("local", 2, lambda x: x.float()),
    "local-dtype": ("local", 1, lambda x: x.double()),
    "local-windows-empty": ("local", 6, lambda x: []),
    "local-windows-negative": ("local", 6, lambda x: [4, -1]),
    "local-atrous": ("local", 7, lambda x: 0),
    "local-bias": ("local", 5, lambda x: torch.zeros(3)),
}


@requires_extension
@pytest.mark.parametrize("name", list(RAW_FORWARD_ERRORS))
def test_raw_forward_op_errors(name):
    which, index, change = RAW_FORWARD_ERRORS[name]
    args = _canonical_global() if which == "global" else _canonical_local()
    op = torch.ops.cfbi.global_match if which == "global" else torch.ops.cfbi.local_match
    op(*args)  # valid as built
    args[index] = change(args[index])
    with pytest.raises(RuntimeError):
        op(*args)


@requires_extension
def test_raw_backward_op_mismatched_grad_shapes():
    args = _canonical_global()
    fg, _, argmin = torch.ops.cfbi.global_match(*args)
    q, r, b = args[0], args[1], args[4]
    with pytest.raises(RuntimeError):
        torch.ops.cfbi.global_match_backward(torch.ones_like(fg)[:, :2], torch.ones_like(fg), fg, argmin, q, r, b, b)
    with pytest.raises(RuntimeError):
        torch.ops.cfbi.global_match_backward(torch.ones_like(fg), torch.ones_like(fg), fg, argmin.long(), q, r, b, b)
    with pytest.raises(RuntimeError):
        torch.ops.cfbi.global_match_backward(torch.ones_like(fg), torch.ones_like(fg), fg, argmin, q[..., :-1], r, b, b)
    args = _canonical_local()
    fg, _, argmin = torch.ops.cfbi.local_match(*args)
    q, p, b = args[0], args[1], args[4]
    with pytest.raises(RuntimeError):
        torch.ops.cfbi.local_match_backward(torch.ones_like(fg), torch.ones_like(fg), fg, argmin, q, p[..., 1:], b, b)
    with pytest.raises(RuntimeError):
        torch.ops.cfbi.local_match_backward(torch.ones_like(fg)[:1], torch.ones_like(fg), fg, argmin, q, p, b, b)


# Backward ops fed a reference that does not fit the forward call: the kernels index the candidates with
# argmin and with query's channel count, so a missing check reads / writes out of bounds. The cases run in
# separate interpreters (the ones that may corrupt memory alone); each prints "<name> RAISED" on a
# RuntimeError, "<name> NO ERROR" otherwise.
_ISOLATED_PRELUDE = """
import torch, cfbi_ops
torch.manual_seed(0)
q = 0.1 * torch.randn(1, 4, 5, 5, dtype=torch.float64)
r = 0.1 * torch.randn(1, 1, 4, 5, 5, dtype=torch.float64)
lab = torch.randint(0, 3, (1, 1, 5, 5))
fb = torch.zeros(1, dtype=torch.float64); bb = torch.zeros(1, dtype=torch.float64)
fg, bg, am = torch.ops.cfbi.global_match(q, r, lab, 3, fb, bb, 1, 0)
g = torch.ones_like(fg)

def attempt(name, fn):
    try:
        out = fn()
        print(name, "NO ERROR", [tuple(o.shape) for o in out], flush=True)
    except RuntimeError as e:
        print(name, "RAISED", str(e).splitlines()[0], flush=True)
"""

_BACKWARD = "torch.ops.cfbi.global_match_backward(g, g, fg, am, q, {}, fb, bb)"
ISOLATED_CASES = {
    # Control: a check that exists (the harness itself reports RAISED).
    "reference-4d": _BACKWARD.format("r[:, 0]"),
    "reference-more-channels": _BACKWARD.format("0.1 * torch.randn(1, 1, 8, 5, 5, dtype=torch.float64)"),
    "reference-batch": _BACKWARD.format("0.1 * torch.randn(2, 1, 4, 5, 5, dtype=torch.float64)"),
    "reference-fewer-channels": _BACKWARD.format("0.1 * torch.randn(1, 1, 2, 5, 5, dtype=torch.float64)"),
    # argmin (from a 5x5 reference) points past the 2x2 reference's candidates.
    "reference-smaller-frame": _BACKWARD.format("0.1 * torch.randn(1, 1, 4, 2, 2, dtype=torch.float64)"),
}
# One interpreter per group; the cases that may write out of bounds run alone.
ISOLATED_GROUPS = [
    ["reference-4d", "reference-more-channels", "reference-batch"],
    ["reference-fewer-channels"],
    ["reference-smaller-frame"],
]


@pytest.fixture(scope="module")
def isolated_results():
    """Runs the groups concurrently and collects, per case: (exit code of its process, its output line)."""
    procs = []
    for group in ISOLATED_GROUPS:
        code = textwrap.dedent(_ISOLATED_PRELUDE) + "".join(
            f"attempt({name!r}, lambda: {ISOLATED_CASES[name]})\n" for name in group
        )
        procs.append((group, run_isolated(code)))
    results = {}
    for group, proc in procs:
        try:
            out, err = proc.communicate(timeout=120)
        except Exception:  # pragma: no cover - a hang is a failure too
            proc.kill()
            out, err = proc.communicate()
        lines = {line.split(" ", 1)[0]: line for line in out.splitlines() if line.strip()}
        for name in group:
            results[name] = (proc.returncode, lines.get(name, ""), (err or "").strip().splitlines()[-3:])
    return results


@requires_extension
@pytest.mark.parametrize("name", list(ISOLATED_CASES))
def test_raw_global_backward_bad_reference_raises(name, isolated_results):
    returncode, line, err_tail = isolated_results[name]
    assert line.startswith(f"{name} RAISED"), (
        f"no RuntimeError: output {line!r}, exit code {returncode}, stderr tail {err_tail}"
    )
    assert returncode == 0, f"process crashed (exit code {returncode}); stderr tail {err_tail}"
