"""Backends: the reference is chosen per call (backend=) or per process (CFBI_OPS_BACKEND) and logged once; without
the compiled extension (a child interpreter with the import blocked) the whole public API and the model run on the
reference and give the compiled path's results (the ops and the model in float64, to 1e-9)."""

from __future__ import annotations

import logging
import os
import textwrap

import pytest
import torch
from conftest import BLOCK_EXTENSION_CODE, requires_extension, run_isolated

import cfbi_ops

# Runs in this process and in the child: every public entry point, forward and backward, float64.
_CASES = """
import torch, cfbi_ops

def run_public_api():
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: (0.1 * torch.randn(*s, generator=g, dtype=torch.float64)).requires_grad_()
    q, r, r5, p = rand(2, 3, 5, 6), rand(2, 3, 6, 5), rand(2, 2, 3, 4, 5), rand(2, 3, 5, 6)
    lab = torch.randint(0, 4, (2, 6, 5), generator=g); lab[0, 0] = 255
    lab5 = torch.randint(0, 4, (2, 2, 4, 5), generator=g)
    plab = torch.randint(0, 3, (2, 5, 6), generator=g)
    fb = torch.tensor([-0.3], dtype=torch.float64, requires_grad=True)
    bb = torch.tensor([[0.2]], dtype=torch.float64, requires_grad=True)
    outs = [
        cfbi_ops.global_match(q, r, lab, 4, fb, bb),
        cfbi_ops.global_match(q, r5, lab5, 4, fb, bb, atrous=2, atrous_min_pixels=1),
        cfbi_ops.global_match(q, r, lab, 4, -0.3, 0.2, atrous=3),
        cfbi_ops.local_match(q, p, plab, 3, fb, bb),
        cfbi_ops.local_match(q, p, plab, 3, fb, bb, windows=(1, 0, 3, 100), atrous=2),
        cfbi_ops.GlobalMatchFunction.apply(q, r5, lab5, 4, fb, bb, 2, 1),
        cfbi_ops.LocalMatchFunction.apply(q, p, plab, 3, fb, bb, (2, 4), 1),
    ]
    results = {}
    for i, (fg, bg) in enumerate(outs):
        w = torch.linspace(-1, 1, fg.numel(), dtype=torch.float64).reshape(fg.shape)
        grads = torch.autograd.grad((fg * w).sum() + (bg * w.flip(0)).sum(), (q, r, r5, p, fb, bb), allow_unused=True)
        results[i] = [fg.detach(), bg.detach()] + [x for x in grads if x is not None]
    return results

def run_model():
    from cfbi_model import CFBIPlus
    torch.manual_seed(0)
    model = CFBIPlus("small").eval().double()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(1, 3, 33, 41, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (1, 33, 41), generator=g)
    with torch.no_grad():
        return model(images, labels, images.flip(-1), labels.flip(-1), images, 3, output_size=(33, 41))[0]
"""


@requires_extension
def test_without_the_extension_everything_runs_on_the_reference(tmp_path):
    """The documented fallback raised AttributeError ('Tensor' object has no attribute 'global_match'); no test ran
    without the extension."""
    namespace: dict = {}
    exec(_CASES, namespace)
    expected_api, expected_model = namespace["run_public_api"](), namespace["run_model"]()
    out = tmp_path / "results.pt"
    code = (
        BLOCK_EXTENSION_CODE
        + textwrap.dedent("""
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import cfbi_ops, cfbi_model
        messages = [str(w.message) for w in caught if "extension" in str(w.message)]
        assert len(messages) == 1 and "blocked by CFBI_TEST_BLOCK_EXTENSION" in messages[0], messages
        assert not cfbi_ops.HAS_EXTENSION and cfbi_ops.resolve_backend() == "reference"
        try:
            cfbi_ops.resolve_backend("compiled")
            raise AssertionError("backend='compiled' without the extension must raise")
        except RuntimeError as error:
            assert "blocked" in str(error)
    """)
        + _CASES
        + f"\ntorch.save((run_public_api(), run_model()), {str(out)!r})\n"
    )
    proc = run_isolated(code)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    got_api, got_model = torch.load(out)
    assert got_api.keys() == expected_api.keys()
    for key, tensors in expected_api.items():
        assert len(got_api[key]) == len(tensors)
        for got, expected in zip(got_api[key], tensors):
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    assert got_model.dtype == torch.float64
    torch.testing.assert_close(got_model, expected_model, rtol=1e-9, atol=1e-9)


def test_backend_per_call():
    g = torch.Generator().manual_seed(2)
    q, r = 0.1 * torch.randn(1, 3, 4, 5, generator=g), 0.1 * torch.randn(1, 3, 4, 5, generator=g)
    lab = torch.randint(0, 3, (1, 4, 5), generator=g)
    fb, bb = torch.full((1,), -0.1), torch.full((1,), 0.1)
    got = cfbi_ops.global_match(q, r, lab, 3, fb, bb, backend="reference")
    expected = cfbi_ops.reference.global_match(q, r, lab, 3, fb, bb)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    got = cfbi_ops.local_match(q, r, lab, 3, fb, bb, windows=(1, 2), backend="reference")
    expected = cfbi_ops.reference.local_match(q, r, lab, 3, fb, bb, windows=(1, 2))
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    for bad in ("cuda", "Reference", None.__class__):
        with pytest.raises(ValueError, match="backend"):
            cfbi_ops.global_match(q, r, lab, 3, fb, bb, backend=bad)
    if cfbi_ops.HAS_EXTENSION:
        got = cfbi_ops.global_match(q, r, lab, 3, fb, bb, backend="compiled")
        expected = torch.ops.cfbi.global_match(q, r[:, None], lab[:, None], 3, fb, bb, 1, 0)[:2]
        for a, b in zip(got, expected):
            assert torch.equal(a, b)


def test_backend_choice_is_logged_once(caplog, monkeypatch):
    monkeypatch.setattr(cfbi_ops.ops, "_logged", set())
    with caplog.at_level(logging.INFO, logger="cfbi_ops"):
        for _ in range(3):
            cfbi_ops.resolve_backend("reference")
    lines = [r.getMessage() for r in caplog.records if r.name == "cfbi_ops"]
    assert lines == ["cfbi_ops: running on the reference backend (chosen by backend=)"] or (
        not cfbi_ops.HAS_EXTENSION and len(lines) == 1
    ), lines


def test_backend_per_process():
    code = textwrap.dedent("""
        import torch, cfbi_ops
        assert cfbi_ops.DEFAULT_BACKEND == "reference" and cfbi_ops.resolve_backend() == "reference"
        q = 0.1 * torch.randn(1, 2, 3, 4, dtype=torch.float64)
        lab = torch.randint(0, 2, (1, 3, 4))
        b = torch.zeros(1, dtype=torch.float64)
        got = cfbi_ops.LocalMatchFunction.apply(q, q.flip(-1), lab, 2, b, b, (1,), 1)
        expected = cfbi_ops.reference.local_match(q, q.flip(-1), lab, 2, b, b, windows=(1,))
        assert all(torch.equal(x, y) for x, y in zip(got, expected))
        print("per-process backend ok")
    """)
    env_before = os.environ.get("CFBI_OPS_BACKEND")
    try:
        os.environ["CFBI_OPS_BACKEND"] = "reference"
        proc = run_isolated(code)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "per-process backend ok" in stdout, stderr[-2000:]
        os.environ["CFBI_OPS_BACKEND"] = "fast"
        proc = run_isolated("import cfbi_ops")
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode != 0 and "CFBI_OPS_BACKEND must be one of auto, compiled, reference" in stderr
    finally:
        if env_before is None:
            os.environ.pop("CFBI_OPS_BACKEND", None)
        else:
            os.environ["CFBI_OPS_BACKEND"] = env_before
