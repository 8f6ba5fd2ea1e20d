"""The fairness benchmark's verdict (benchmarks/fairness.py): judged on B over C, with B/A and C/A beside it,
and a pair left out of a ratio only by that ratio's own two phases."""
import random
import sys

from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import fairness  # noqa: E402  (a script of benchmarks/, not a package)


def phase(base: float, *, outside: float = 0.0, greedy: bool = False, seed: int = 0) -> "fairness.Phase":
    rng = random.Random(seed)
    tallies = {"well-behaved": fairness.Tally(latencies=[base + rng.random() for _ in range(600)],
                                              statuses={200: 600}, span=15.0)}
    if greedy:
        tallies["greedy"] = fairness.Tally(latencies=[base] * 300, statuses={200: 300, 429: 2700}, span=15.0)
    return fairness.Phase(tallies, 1.0, 0.1, 0.0, 0.2, 5.0, 0.3, outside=outside)


def run_of(a: float, b: float, c: float, pairs: int = 6, spoil_a: bool = False) -> "fairness.Run":
    done = [("ABC", phase(a, seed=n, outside=0.5 if spoil_a else 0.0), phase(b, greedy=True, seed=100 + n))
            for n in range(pairs)]
    at_limit = [phase(c, greedy=True, seed=200 + n) for n in range(pairs)]
    anonymous = phase(0.0)
    anonymous.tallies["anonymous"] = fairness.Tally(statuses={401: 3000}, span=15.0)
    return fairness.Run(done, at_limit, phase(0.0), phase(5.0, greedy=True), anonymous)


def verdict_text(run: "fairness.Run") -> str:
    return "\n".join(fairness.summary(run, 20, 40, 15))


def test_the_goal_is_judged_on_b_over_c():
    # The admitted share raises the p99 by half, the refused excess by nothing: the goal is met, B/A is not.
    text = verdict_text(run_of(a=4.0, b=6.0, c=6.0))
    assert "The goal (B/C)" in text and "meets the goal" in text
    assert "B/A, not the goal's reading" in text and "(all above 1.20)" in text


def test_a_refused_excess_that_raises_the_tail_misses_the_goal():
    text = verdict_text(run_of(a=4.0, b=9.0, c=4.0))
    assert "misses the goal" in text


def test_a_pair_is_left_out_only_of_the_ratios_its_spoiled_phase_is_in():
    # A phases with other work on the box: B/A loses its pairs, B/C keeps all of them.
    text = verdict_text(run_of(a=4.0, b=4.0, c=4.0, spoil_a=True))
    assert "Kept 6 of 6 pairs for B/C, 0 for B/A" in text
    assert "meets the goal" in text


def test_an_expired_token_withholds_the_verdict():
    run = run_of(a=4.0, b=4.0, c=4.0)
    run.pairs[0][2].tallies["well-behaved"].statuses[401] = 5
    text = verdict_text(run)
    assert "No verdict" in text and "meets the goal" not in text
