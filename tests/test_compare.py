"""A/B answers: calibrated at every n, A against itself, the user's functions measured as they are."""

import importlib.util
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from labkit import Metric, Outcome, Scenario, Trial, TrialSet, compare_functions, paired_ratio_ci, ratio_ci, sweep
from labkit.core import stats
from labkit.core.compare import LOOKS, Comparison
from labkit.core.scenario import positive
from labkit.ui.cli import main
from trial_functions import (async_load, async_nap, constant, constant_too, fast, load, naps, naps_too, never_returns,
                             scaled_nap, slow, stamp, twice_as_fast, waits)

FAST = Metric("tokens_per_s", "tokens/s", higher_is_better=True)
CPU = Metric("cpu_s_per_token", "s", higher_is_better=False)
BENCHMARK = Path(__file__).parents[1] / "benchmarks" / "ab_calibration.py"


def side(name: str, values, outcomes=None, metric: str = FAST.name) -> TrialSet:
    outcomes = outcomes or ["ok"] * len(values)
    trials = tuple(Trial("s", name, i, Outcome(o), None if o == "ok" else "ValueError: no", 1.0,
                         {} if v is None else {metric: v}, {}) for i, (v, o) in enumerate(zip(values, outcomes)))
    return TrialSet("s", name, {}, trials, versions={})


def comparison(a, b, metric=FAST, **kwargs) -> Comparison:
    return Comparison("s", side("a", a, metric=metric.name), side("b", b, metric=metric.name), metric, (metric,), **kwargs)


# The exact null distributions, against brute force


def test_the_rank_sum_distribution_is_exact():
    for m, n in [(1, 1), (2, 3), (3, 3), (4, 4), (3, 5), (5, 5)]:
        counts = np.zeros(m * n + 1)
        for chosen in itertools.combinations(range(m + n), m):
            counts[sum(j > i for i in chosen for j in range(m + n) if j not in chosen)] += 1
        assert np.allclose(np.cumsum(counts) / counts.sum(), stats.rank_sum_cdf(m, n)), (m, n)


def test_the_signed_rank_distribution_is_exact():
    for n in range(1, 11):
        counts = np.zeros(n * (n + 1) // 2 + 1)
        for signs in itertools.product((0, 1), repeat=n):
            counts[sum(rank * s for rank, s in zip(range(1, n + 1), signs))] += 1
        assert np.allclose(np.cumsum(counts) / counts.sum(), stats.signed_rank_cdf(n)), n


@pytest.mark.parametrize("confidence", [0.9, 0.95, 1 - 0.05 / 3, 0.99])
def test_no_test_exceeds_its_level_at_any_n(confidence):
    for n in range(1, 31):
        for method in (stats.PAIRED, stats.UNPAIRED):
            assert stats.size(method, n, confidence) <= 1 - confidence + 1e-12, (method, n)


def test_the_fewest_trials_that_can_answer():
    assert stats.fewest(0.95) == (4, 6)  # 3 against 3: the best p is 2/20; 5 pairs: 2/32
    assert stats.fewest(1 - 0.05 / 3) == (5, 7)  # each of an open-ended comparison's three looks


# Verdicts


def test_three_a_side_is_too_few_and_says_so():
    """The bootstrap's trap: every B beat every A, 10% likely with no difference; it printed '95% CI'."""
    c = comparison([100, 101, 99], [120, 119, 121])
    assert c.answer == "too few trials to tell at 95%: 3 a side; it takes 4 a side"
    assert "95% CI" not in c.verdict and "no interval" in c.verdict and not c.decisive()
    assert math.isnan(ratio_ci([100, 101, 99], [120, 119, 121])[1])


def test_a_known_difference_is_found_and_its_direction_named():
    rng = np.random.default_rng(1)
    a, b = rng.normal(100, 5, 5), rng.normal(150, 5, 5)
    c = comparison(list(a), list(b))
    assert c.test.method == stats.UNPAIRED and 1.35 < c.ci[0] <= c.ratio <= c.ci[1] < 1.65
    assert c.verdict.startswith("both ok in 5 of 5; b is better than a on tokens_per_s (b/a = 1.")
    assert "95% CI [" in c.verdict
    assert comparison(list(a), list(b), CPU).answer == "b is worse than a on cpu_s_per_token"


def test_the_ratio_belongs_to_its_interval_and_is_near_the_medians():
    rng = np.random.default_rng(4)
    a, b = rng.lognormal(0, 0.1, 12), rng.lognormal(0.2, 0.1, 12)
    ratio, low, high = paired_ratio_ci(a, b)
    assert low <= ratio <= high and abs(ratio / (np.median(b) / np.median(a)) - 1) < 0.1


def test_pairs_see_through_drift():
    """The machine slows down threefold during the run; the pair's order is a coin, as compare() plans it."""
    coin = np.random.default_rng(5).random(20) < 0.5
    slots = 10 * np.linspace(1, 3, 40)
    first, second = slots[0::2], slots[1::2]
    a = np.where(coin, second, first)
    b = 1.05 * np.where(coin, first, second)
    _, low, high = ratio_ci(a, b)
    assert low < 1 < high  # unpaired: lost in the drift
    ratio, low, high = paired_ratio_ci(a, b)
    assert 1.0 < low <= ratio <= high < 1.1


def test_no_ratio_without_measurements_or_positive_values(recwarn):
    assert comparison([None, None, None, None], [1.0] * 4, ).answer == "no ratio: a measured no tokens_per_s"
    assert comparison([0.0] * 4, [0.0] * 4).answer.startswith("no ratio: tokens_per_s was 0 or less")
    assert np.isnan(ratio_ci([], [1.0])[0]) and not recwarn.list


def test_what_happened_comes_first_and_failed_trials_stay_out_of_the_medians():
    a = side("a", [100.0, 3.0, 3.0, 101.0, 99.0, 100.0], ["ok", "raised", "raised", "ok", "ok", "ok"])
    c = Comparison("s", a, side("b", [100.0] * 6), FAST, (FAST,))
    assert c.verdict.startswith("a raised ValueError in 2 of 6, ok in 4 of 6; b ok in 6 of 6; ")
    assert c.a_median == 100.0  # the partial 3.0 tokens/s of the failed runs is not the variant's speed
    assert a.values(FAST.name) == [100.0, 101.0, 99.0, 100.0]
    assert a.values(FAST.name, failed=True) == [100.0, 3.0, 3.0, 101.0, 99.0, 100.0]  # kept, when asked
    assert a.summary["metrics"][FAST.name]["n"] == 4
    assert c.test.pairs == 4 and c.test.method == stats.UNPAIRED  # 4 complete pairs: too few for pairs


def test_an_open_ended_verdict_is_at_its_looks_level_and_reads_back():
    """Each of three looks at 98.3%, so that all three together keep 95%: 5 a side can answer, 4 cannot."""
    c = comparison([1.0, 1.1, 0.9, 1.0, 1.2], [1.0, 1.0, 1.1, 0.9, 1.0], looks=3, order="abbaabbaab")
    assert c.verdict.endswith(", 98.3% at each of 3 looks)") and "95% CI [" in c.verdict
    again = Comparison.from_dict(c.to_dict())
    assert (again.verdict, again.looks, again.order, again.confidence) == (c.verdict, 3, "abbaabbaab", 0.95)
    four = comparison([1.0, 1.1, 0.9, 1.0], [1.0, 1.0, 1.1, 0.9], looks=3)
    assert four.answer == "too few trials to tell at 95% over 3 looks: 4 a side; it takes 5 a side"


# Calibration: the benchmark's own simulation, with a fixed seed


def _benchmark():
    spec = importlib.util.spec_from_file_location("ab_calibration", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_identical_variants_name_a_winner_at_most_5_percent_of_the_time():
    """Every n from 3 to 20 and every open-ended scheme, under every noise shape, drift included.

    2,000 draws a cell: a cell may read up to 5% + 4 standard errors (7%); the highest three,
    measured again on 20,000 fresh draws, must stay within 5% + 3 standard errors (5.5%). Giving up
    the coin (A always first) under drift, or looking three times at 95%, fails this."""
    bench = _benchmark()
    table = bench.false_positive_table(2000, seed=11)
    assert len(table) == len(bench.SHAPES) * (len(bench.SIZES) + len(bench.SCHEMES))
    worst = max(table, key=table.get)
    assert table[worst] <= 0.07, worst
    for cell in sorted(table, key=table.get, reverse=True)[:3]:
        assert bench.remeasure(cell, 20_000, seed=12) <= 0.055, cell


def test_the_calibration_would_catch_a_fixed_order_under_drift():
    """The check above can fail: A always first, the machine slowing down, 20 pairs: well above 5%."""
    bench = _benchmark()
    rng = np.random.default_rng(13)
    v = bench.SHAPES["drift"](rng, 2000, 40)
    assert bench.decisive(v[:, 0::2], v[:, 1::2], 0.95).mean() > 0.1  # 17% with this seed; the check allows 7%


def test_a_1_2x_difference_is_found_by_10_pairs_at_10_percent_noise():
    bench = _benchmark()
    rng = np.random.default_rng(14)
    assert bench.fixed_rate(bench.SHAPES["normal"], 10, 2000, rng, effect=1.2) > 0.85
    assert bench.fixed_rate(bench.SHAPES["normal"], 3, 2000, rng, effect=1.2) == 0.0  # too few: never a winner


# Running comparisons (isolated trials)


def test_user_functions_run_isolated_in_pairs_of_random_order():
    result = compare_functions(slow, fast, metric="speed", repeats=6, monitor=False, seed=3)
    assert [t.outcome for t in result.a.trials + result.b.trials] == ["ok"] * 12
    assert result.verdict.startswith("both ok in 6 of 6; fast is better than slow on speed (fast/slow = ")
    assert result.test.method == stats.PAIRED and 1.9 < result.ratio < 2.1
    assert {result.order[i:i + 2] for i in range(0, 12, 2)} == {"ab", "ba"}
    frame = result.to_frame()
    assert set(frame.variant) == {"slow", "fast"} and set(frame.metric) == {"seconds", "speed", "call_s"}


def test_one_function_on_both_sides_keeps_two_sides():
    result = compare_functions(slow, slow, metric="speed", repeats=4, monitor=False)
    assert (result.a.variant, result.b.variant) == ("a", "b")
    assert [t.index for t in result.a.trials] == [t.index for t in result.b.trials] == [0, 1, 2, 3]
    assert 0.98 < result.ratio < 1.02  # whether noise is called a winner too often is the calibration's question


def test_a_variant_against_itself(cheap, capsys):
    """``labkit compare S V V``: n trials a side, split by each pair's coin (it had put all on side A)."""
    assert main(["compare", "test-count", "fast", "fast", "--repeats", "4", "--json"]) == 0
    result = Comparison.from_dict(json.loads(capsys.readouterr().out))
    assert len(result.a.trials) == len(result.b.trials) == 4 and result.labels == ("fast (A)", "fast (B)")
    assert result.verdict == "both ok in 4 of 4; within noise (fast (B)/fast (A) = 1.00, 95% CI [1.00, 1.00])"
    assert sorted(result.order) == list("aaaabbbb")


def test_an_open_ended_comparison_stops_when_decisive_and_says_so():
    result = compare_functions(constant, twice_as_fast, metric="speed", monitor=False)
    assert result.stopped == "decisive after 5 trials a side" and len(result.a.trials) == 5
    assert result.answer == "twice_as_fast is better than constant on speed"
    assert "95% CI [2.00, 2.00], 98.3% at each of 3 looks" in result.verdict


def test_an_open_ended_comparison_of_identical_variants_runs_to_its_last_look():
    result = compare_functions(constant, constant_too, metric="speed", monitor=False)
    assert result.stopped == "not decisive after 20 trials a side, the most it runs", result.verdict
    assert result.answer == "within noise" and result.looks == len(LOOKS)


def test_the_budget_is_checked_after_every_pair():
    """Pairs of about 0.5 s, a 2 s budget: it stops before a pair that would pass it, not at its first
    look (5 pairs, 2.5 s)."""
    began = time.monotonic()
    result = compare_functions(naps, naps_too, monitor=False, budget=2.0)
    spent = time.monotonic() - began
    n = len(result.a.trials)
    assert n < LOOKS[0] and result.stopped == f"not decisive after {n} trials a side: another pair would pass the 2 s budget"
    assert spent < 2.0 + spent / n  # past the budget by less than one pair
    assert "too few trials to tell at 95% over 3 looks" in result.verdict and not result.decisive()


def test_a_function_that_waits_is_measured():
    """3.5 s with every thread blocked, as a call to a server: the scenarios' stillness rule (3 s) called it hung."""
    result = compare_functions(waits, constant, repeats=1, monitor=False)
    assert [t.outcome for t in result.a.trials + result.b.trials] == ["ok", "ok"]
    assert 3.5 <= result.a_median < 5 and result.metric.name == "call_s" and not result.metric.higher_is_better


def test_a_function_that_never_returns_is_named_hung():
    """Still for the ``idle`` second asked for: hung, said before the ratio (that there is none)."""
    result = compare_functions(never_returns, constant, metric="speed", repeats=1, idle=1.0, timeout=30, monitor=False)
    assert result.verdict.startswith("never_returns hung in 1 of 1 (no progress"), result.verdict
    assert result.verdict.endswith("); constant ok in 1 of 1; no ratio: never_returns measured no speed"), result.verdict


def test_setup_is_not_measured_arguments_pass_and_async_is_awaited():
    result = compare_functions(scaled_nap, async_nap, setup=(load, async_load), args=(0.1,), kwargs={"times": 2},
                               repeats=1, monitor=False)
    (sync,), (awaited,) = result.a.trials, result.b.trials
    assert sync.outcome == awaited.outcome == "ok", (sync.error, awaited.error)
    for trial in (sync, awaited):
        assert 0.2 <= trial.metrics["call_s"] < 0.6  # 0.1 s x 2, the setup's 0.5 s left out
        assert trial.seconds >= 0.7  # the trial, setup included
    assert sync.notes == {"got": "model"} and awaited.notes == {"got": "client"}


def test_sweeps_interleave_their_variants():
    scen = Scenario("test-order", summary="when each trial ran", metrics=(Metric("at", "s"),),
                    knobs=(positive("k", 1, "a knob"),))
    scen.variant("x")(stamp)
    scen.variant("y")(stamp)
    result = sweep(scen, ["x", "y"], {"k": [1]}, repeats=2)
    ran = sorted((t.metrics["at"], run.variant) for run in result.runs for t in run.trials)
    assert [variant for _, variant in ran] == ["x", "y", "x", "y"]
