"""The benchmark's command line: its sizes, seed and mode from the flags, else the ``BENCH_*`` variables, and a value
it cannot use stops it at once with the variable's or flag's name (a usage error, exit status 2), never a traceback
after the servers have started."""

from __future__ import annotations

import pytest

from stream.localstack.bench import plan_of


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        plan_of(argv, environ)
    assert stopped.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "environ", "named"),
    [
        ([], {"BENCH_SEED": "abc"}, "BENCH_SEED='abc' is not a whole number"),
        ([], {"BENCH_SEED": "1.5"}, "BENCH_SEED='1.5' is not a whole number"),
        ([], {"BENCH_QUICK": "maybe"}, "BENCH_QUICK='maybe' is neither on"),
        ([], {"BENCH_EVENTS": "lots"}, "BENCH_EVENTS='lots' is not a number"),
        ([], {"BENCH_EVENTS": "inf"}, "BENCH_EVENTS='inf' is not a finite number"),
        ([], {"BENCH_LONG_EVENTS": "nan"}, "BENCH_LONG_EVENTS='nan' is not a finite number"),
        ([], {"BENCH_PACED_S": "-inf"}, "BENCH_PACED_S='-inf' is not a finite number"),
        (["--paced-seconds", "nan"], {}, "--paced-seconds nan is not a finite number"),
        (["--events", "100"], {}, "the sizes must be at least 500 events"),
        (["--seed", "x"], {}, "argument --seed: invalid int value: 'x'"),
    ],
)
def test_a_value_the_benchmark_cannot_use_stops_it_with_its_name(
    capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str], named: str
) -> None:
    assert named in refused(capsys, argv, environ)


def test_the_flags_win_over_the_variables_and_the_variables_over_the_defaults() -> None:
    full = plan_of([], {})
    assert (full.events, full.long_events, full.paced_s, full.seed, full.quick) == (200_000, 1_000_000, 60.0, 1, False)
    sized = plan_of([], {"BENCH_EVENTS": "20_000", "BENCH_SEED": "7", "BENCH_QUICK": "off"})
    assert (sized.events, sized.seed, sized.quick) == (20_000, 7, False)
    flagged = plan_of(["--events", "5000", "--seed", "3"], {"BENCH_EVENTS": "lots", "BENCH_SEED": "abc"})
    assert (flagged.events, flagged.seed) == (5_000, 3)
    for on in ("1", "true", "Yes", " on "):
        quick = plan_of([], {"BENCH_QUICK": on, "BENCH_EVENTS": "20_000"})  # the quick mode ignores the sizes
        assert (quick.quick, quick.events, quick.long_events, quick.paced_s) == (True, 3_000, 4_000, 5.0)
    assert plan_of(["--quick"], {"BENCH_QUICK": "0"}).quick is True
