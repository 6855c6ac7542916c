"""Property-based fuzzing of both ops (hypothesis), each target in a child interpreter so that a crash is a failure
with its exit signal instead of the end of the suite.

Targets: "global" / "local" draw valid cases from the fields of the harness's Case (tests/conftest.py), half
with one outlier element (1e2 .. 1e30, in the query or the candidates), and check the compiled op against the harness
oracle (forward, every CPU dtype of the harness) and against the reference (float64 gradients and second
derivatives); then invalid arguments, which must raise an exception whose message names the argument. "raw" calls
the torch.ops.cfbi ops with mutated canonical arguments: each call returns or raises RuntimeError.

Run one target by hand: python tests/test_ops_fuzz.py global 1000
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Valid cases per op and CI run (the issue asks for at least 1000), and invalid / raw calls.
VALID_CASES = int(os.environ.get("CFBI_FUZZ_CASES", "1000"))


def _fuzz(target: str, count: int) -> tuple[int, int]:
    """The child's body: returns (cases run, failures)."""
    import torch
    from conftest import (
        Case,
        backward_args,
        call,
        first_and_second_derivatives,
        inputs,
        leaf_inputs,
        public_args,
        raw_args,
    )
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from test_ops_harness import CPU_DTYPES, TOLERANCE, oracle

    torch.set_num_threads(1)
    counter = {"cases": 0}
    config = settings(
        max_examples=count, deadline=None, database=None, derandomize=False, suppress_health_check=list(HealthCheck)
    )
    huge = st.sampled_from([2**31 - 1, 2**40, 2**62, 2**63 - 1])

    @st.composite
    def cases(draw, op: str) -> Case:
        fields = dict(
            op=op,
            B=draw(st.integers(1, 2)),
            C=draw(st.integers(0, 6)),
            H=draw(st.integers(1, 7)),
            W=draw(st.integers(1, 7)),
            L=draw(st.integers(1, 5)),
            atrous=draw(st.one_of(st.integers(1, 4), st.just(2**31 - 1))),
            layout=draw(st.sampled_from(["contiguous", "channels_last", "sliced", "transposed", "expanded"])),
            ignore=draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
            skew=draw(st.sampled_from([None, 0.3])),
            label_dtype=draw(st.sampled_from(["int64", "uint8", "int32"])),
            seed=draw(st.integers(0, 2**31)),
            fg_bias=draw(st.floats(-6, 3)),
            bg_bias=draw(st.floats(-6, 3)),
            # One outlier element in half of the cases (issue 21): the float32 selection's rounding bound.
            outlier=draw(st.sampled_from([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1e2, 1e4, 1e6, -1e10, 1e20, 1e30])),
            outlier_in=draw(st.sampled_from(["query", "reference"])),
        )
        if op == "global":
            t = draw(st.integers(1, 2))
            fields.update(
                T=t,
                ref_5d=t > 1 or draw(st.booleans()),
                Hr=draw(st.integers(1, 7)),
                Wr=draw(st.integers(1, 7)),
                min_pixels=draw(st.one_of(st.sampled_from([0, 0, 1, 3]), huge)),
            )
        else:
            fields.update(windows=tuple(draw(st.lists(st.one_of(st.integers(0, 10), huge), min_size=1, max_size=4))))
        return Case(**fields)

    failures = []

    def check_valid(case: Case, dtype: torch.dtype) -> None:
        counter["cases"] += 1
        x = inputs(case, dtype)
        fg, bg = call(case, x, "compiled")
        efg, ebg = oracle(case, x)
        for got, want in ((fg, efg), (bg, ebg)):
            torch.testing.assert_close(got.double(), torch.from_numpy(want), rtol=0, atol=TOLERANCE[dtype])
        if dtype == torch.float64:
            compiled, reference = (
                first_and_second_derivatives(lambda x, b=backend: call(case, x, b), leaf_inputs(case, dtype))
                for backend in ("compiled", "reference")
            )
            for a, b in zip(compiled, reference):
                torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)

    # Mutations of valid arguments, and the argument the error must name.
    def mutations(op: str):
        cand = "reference" if op == "global" else "previous"
        labels = "ref_labels" if op == "global" else "prev_labels"
        yield "query", lambda a, k: a.update(query=a["query"][0])
        yield "query", lambda a, k: a.update(query=a["query"].long())
        yield cand, lambda a, k: a.update(candidates=a["candidates"].to(torch.float16))

        def one_more_channel(a, k):
            shape = list(a["candidates"].shape)
            shape[-3] += 1
            a.update(candidates=a["candidates"].new_zeros(shape))

        yield cand, one_more_channel
        yield labels, lambda a, k: a.update(labels=a["labels"].double())
        yield labels, lambda a, k: a.update(labels=a["labels"][..., :-1])
        yield "num_labels", lambda a, k: a.update(num_labels=0)
        yield "num_labels", lambda a, k: a.update(num_labels=2**31)
        yield "num_labels", lambda a, k: a.update(num_labels=True)
        yield "atrous", lambda a, k: k.update(atrous=0)
        yield "atrous", lambda a, k: k.update(atrous=-3)
        yield "atrous", lambda a, k: k.update(atrous=2.0)
        yield "fg_bias", lambda a, k: a.update(fg_bias=torch.zeros(2))
        yield "bg_bias", lambda a, k: a.update(bg_bias=torch.zeros(1, dtype=torch.long))
        yield "bg_bias", lambda a, k: a.update(bg_bias="0.5")
        if op == "global":
            yield "atrous_min_pixels", lambda a, k: k.update(atrous_min_pixels=-1)
            yield "atrous_min_pixels", lambda a, k: k.update(atrous_min_pixels=2**63)
        else:
            yield "windows", lambda a, k: k.update(windows=())
            yield "windows", lambda a, k: k.update(windows=(3, -1))
            yield "windows", lambda a, k: k.update(windows=5)
            yield "windows", lambda a, k: k.update(windows=(2**64,))

    def check_invalid(case: Case, which: int) -> None:
        counter["cases"] += 1
        name, change = list(mutations(case.op))[which % len(list(mutations(case.op)))]
        fn, args, kwargs = public_args(case, inputs(case, torch.float32))
        change(args, kwargs)
        try:
            fn(*args.values(), **kwargs)
        except (ValueError, RuntimeError, TypeError) as error:
            if name not in str(error):
                raise AssertionError(f"the message does not name {name}: {error}") from None
            return
        raise AssertionError(f"no error for a bad {name}")

    def check_raw(case: Case, which: int, seed: int) -> None:
        counter["cases"] += 1
        op, backward, args = raw_args(case, inputs(case, torch.float32))
        g = torch.Generator().manual_seed(seed)
        index = which % 9
        if index < 3:  # a tensor argument with one dimension dropped, added, or resized
            t = args[index]
            choice = int(torch.randint(0, 3, (1,), generator=g))
            args[index] = t[0] if choice == 0 else (t[None] if choice == 1 else t[..., : max(t.shape[-1] - 1, 0)])
        elif index == 3:
            args[3] = int(torch.randint(-2, 1, (1,), generator=g))
        elif index == 4:
            args[4] = args[4].to("meta") if seed % 2 else args[4].long()
        elif index == 5:
            args[6 if case.op == "global" else 7] = -int(torch.randint(0, 3, (1,), generator=g))
        elif index == 6:
            args[1] = args[1].to("meta")
        try:
            fg, bg, argmin = op(*args)
        except RuntimeError:
            return
        if index < 7:
            assert index in (0, 1, 2, 5) and fg.device.type == "cpu", f"mutation {index} accepted"
        # Backward with a corrupted argmin or a smaller candidate frame: RuntimeError, no out-of-bounds access.
        grads = torch.ones_like(fg)
        bad = argmin.clone()
        if bad.numel():
            bad.view(-1)[int(torch.randint(0, bad.numel(), (1,), generator=g))] = 10**6 if index == 7 else -5
        try:
            backward(*backward_args(args, fg, bad, grads, grads))
        except RuntimeError:
            return
        assert bad.numel() == 0 or bad.max() < 10**6, "an out-of-range argmin was accepted"

    if target in ("global", "local"):

        @config
        @given(cases(target), st.sampled_from(CPU_DTYPES))
        def valid(case, dtype):
            try:
                check_valid(case, dtype)
            except Exception as error:
                failures.append((case, str(error)[:300]))
                raise

        @settings(config, max_examples=max(count // 4, 50))
        @given(cases(target), st.integers(0, 100))
        def invalid(case, which):
            try:
                check_invalid(case, which)
            except Exception as error:
                failures.append((case, str(error)[:300]))
                raise

        for test in (valid, invalid):
            try:
                test()
            except Exception as error:  # hypothesis re-raises the shrunk failure
                print(f"FAILED {test.__name__}: {str(error)[:2000]}", flush=True)
    else:

        @settings(config, max_examples=count)
        @given(cases("global"), st.integers(0, 100), st.integers(0, 2**31), st.booleans())
        def raw(case, which, seed, local):
            if local:
                case = Case(**{**case.__dict__, "op": "local", "windows": (1, 3)})
            try:
                check_raw(case, which, seed)
            except Exception as error:
                failures.append((case, str(error)[:300]))
                raise

        try:
            raw()
        except Exception as error:
            print(f"FAILED raw: {str(error)[:2000]}", flush=True)
    return counter["cases"], len(failures)


@pytest.mark.parametrize("target", ["global", "local", "raw"])
def test_fuzz(target: str, capsys) -> None:
    import cfbi_ops

    if not cfbi_ops.HAS_EXTENSION or cfbi_ops.resolve_backend() != "compiled":
        pytest.skip("fuzzes the compiled kernels")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.path.join(ROOT, "tests"), OMP_NUM_THREADS="1")
    count = VALID_CASES if target != "raw" else VALID_CASES // 2
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), target, str(count)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    summary = re.search(r"fuzz (\w+): (\d+) cases, (\d+) failures", proc.stdout)
    with capsys.disabled():  # the case count in the CI log, also under pytest -q
        print(f"\n{summary.group(0) if summary else 'fuzz ' + target + ': no summary'} ({proc.returncode=})")
    assert proc.returncode == 0, (
        f"child exit code {proc.returncode} (negative: killed by a signal)\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    assert summary is not None, proc.stdout[-3000:]
    assert int(summary.group(3)) == 0, proc.stdout[-3000:]
    assert int(summary.group(2)) >= count, f"only {summary.group(2)} cases ran"


if __name__ == "__main__":
    target, count = sys.argv[1], int(sys.argv[2])
    cases_run, failed = _fuzz(target, count)
    print(f"fuzz {target}: {cases_run} cases, {failed} failures", flush=True)
