"""Oracle for flywheel-stats: reads a JSON array of cases on stdin, answers each with GrowthBook's gbstats 0.8.0
(and mpmath/scipy for the special functions) as a JSON array on stdout, in the same order.

Case kinds:
- "test": {"engine": "frequentist" | "greater" | "less" | "sequential" | "bayesian", "lift", "alpha",
  "tuning", "prior": {"mean", "variance", "proper"}, "prior_scale", "inverse", "arms": [ArmData JSON]}
  -> {"comparisons": [{"error": str|None, "estimate", "std_error", "dof", "ci": [lo, hi], "p_value",
  "chance_to_win", "risk": [control, treatment]}]} (every treatment against arms[0])
- "srm": {"users", "weights"} -> {"p_value"} (gbstats.utils.check_srm)
- "bh": {"p_values"} -> {"adjusted"} (scipy.stats.false_discovery_control)
- "special": {"fn", "args"} -> {"value"} (mpmath at 60 digits; scipy for the t quantile)

Only gbstats' statistics and tests are imported (not gbstats.gbstats, which needs pandas).
"""
import json
import math
import sys

try:
    import gbstats
    from gbstats.models.statistics import (
        ProportionStatistic,
        QuantileStatistic,
        RatioStatistic,
        RegressionAdjustedStatistic,
        SampleMeanStatistic,
    )
    from gbstats.frequentist.tests import (
        FrequentistConfig,
        OneSidedTreatmentGreaterTTest,
        OneSidedTreatmentLesserTTest,
        SequentialConfig,
        SequentialTwoSidedTTest,
        TwoSidedTTest,
    )
    from gbstats.bayesian.tests import EffectBayesianABTest, EffectBayesianConfig, GaussianPrior
    from gbstats.utils import check_srm
    import mpmath
    import scipy
    import scipy.stats
except ImportError as e:  # the Rust test turns this into a failure with the message
    print(f"ORACLE_IMPORT_ERROR: {e}", file=sys.stderr)
    sys.exit(3)

if gbstats.__version__ != "0.8.0":
    print(f"ORACLE_IMPORT_ERROR: gbstats {gbstats.__version__} installed, 0.8.0 expected", file=sys.stderr)
    sys.exit(3)

mpmath.mp.dps = 60


def num(x):
    """JSON has no infinities or NaN: None instead (the Rust side treats None as unbounded / missing)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def component(n, m):
    if m["kind"] == "proportion":
        return ProportionStatistic(n=n, sum=m["sum"])
    return SampleMeanStatistic(n=n, sum=m["sum"], sum_squares=m["sum_squares"])


def is_unit(n, m):
    return m["kind"] == "mean" and m["sum"] == n and m["sum_squares"] == n


def statistic(arm):
    t, n = arm["type"], arm["n"]
    if t == "proportion":
        return ProportionStatistic(n=n, sum=arm["sum"])
    if t == "mean":
        return SampleMeanStatistic(n=n, sum=arm["sum"], sum_squares=arm["sum_squares"])
    if t == "ratio":
        return RatioStatistic(
            n=n,
            m_statistic=component(n, arm["numerator"]),
            d_statistic=component(n, arm["denominator"]),
            m_d_sum_of_products=arm["cross_sum"],
        )
    if t == "cuped":
        return RegressionAdjustedStatistic(
            n=n,
            post_statistic=component(n, arm["post"]),
            pre_statistic=component(n, arm["pre"]),
            post_pre_sum_of_products=arm["cross_sum"],
            theta=0,
        )
    if t == "cuped_ratio":
        # gbstats 0.8.0 has no CUPED for ratios; with unit denominators it is CUPED on the numerators.
        if not (is_unit(n, arm["denominator"]) and is_unit(n, arm["pre_denominator"])):
            raise ValueError("cuped_ratio cases need unit denominators to have a gbstats equivalent")
        return RegressionAdjustedStatistic(
            n=n,
            post_statistic=component(n, arm["numerator"]),
            pre_statistic=component(n, arm["pre_numerator"]),
            post_pre_sum_of_products=arm["cross"]["numerator_pre_numerator"],
            theta=0,
        )
    if t == "quantile":
        return QuantileStatistic(
            n=n,
            n_star=arm["n_star"],
            nu=arm["level"],
            quantile_hat=arm["estimate"],
            quantile_lower=arm["lower"],
            quantile_upper=arm["upper"],
        )
    raise ValueError(f"unknown arm type {t}")


def run_test(case, control, treatment):
    a, b = statistic(control), statistic(treatment)
    engine, lift, alpha = case["engine"], case["lift"], case["alpha"]
    if engine == "bayesian":
        prior = case["prior"]
        cfg = EffectBayesianConfig(
            difference_type=lift,
            inverse=case["inverse"],
            alpha=alpha,
            prior_effect=GaussianPrior(mean=prior["mean"], variance=prior["variance"], proper=prior["proper"]),
            prior_type=case["prior_scale"],
        )
        test = EffectBayesianABTest(a, b, cfg)
        r = test.compute_result()
        return {
            "error": r.error_message,
            "estimate": num(r.expected),
            "std_error": num(r.uplift.stddev),
            "ci": [num(r.ci[0]), num(r.ci[1])],
            "chance_to_win": num(r.chance_to_win),
            "risk": [num(r.risk[0]), num(r.risk[1])],
        }
    if engine == "sequential":
        test = SequentialTwoSidedTTest(
            a, b, SequentialConfig(difference_type=lift, alpha=alpha, sequential_tuning_parameter=case["tuning"])
        )
    else:
        cls = {"frequentist": TwoSidedTTest, "greater": OneSidedTreatmentGreaterTTest,
               "less": OneSidedTreatmentLesserTTest}[engine]
        test = cls(a, b, FrequentistConfig(difference_type=lift, alpha=alpha))
    r = test.compute_result()
    out = {
        "error": r.error_message,
        "estimate": num(r.expected),
        "std_error": num(r.uplift.stddev),
        "ci": [num(r.ci[0]), num(r.ci[1])],
        "p_value": num(r.p_value),
    }
    if r.error_message is None:
        out["dof"] = num(test.dof)
    return out


def special(fn, args):
    mp = mpmath
    if fn == "norm_sf":
        return mp.ncdf(-mp.mpf(args[0]))
    if fn == "norm_cdf":
        return mp.ncdf(mp.mpf(args[0]))
    if fn == "t_sf":
        t, df = mp.mpf(args[0]), mp.mpf(args[1])
        half = mp.betainc(df / 2, mp.mpf(1) / 2, 0, df / (df + t * t), regularized=True) / 2
        return half if t >= 0 else 1 - half
    if fn == "chi2_sf":
        return mp.gammainc(mp.mpf(args[1]) / 2, mp.mpf(args[0]) / 2, mp.inf, regularized=True)
    if fn == "beta_inc":
        return mp.betainc(mp.mpf(args[0]), mp.mpf(args[1]), 0, mp.mpf(args[2]), regularized=True)
    if fn == "norm_ppf":
        with mp.workdps(400):  # 2p − 1 must not round to −1 for p = 1e-300
            return +(mp.sqrt(2) * mp.erfinv(2 * mp.mpf(args[0]) - 1))
    if fn == "t_ppf":  # scipy (Boost) is accurate to a few ulps here; mpmath has no t quantile
        return scipy.stats.t.ppf(args[0], args[1])
    raise ValueError(f"unknown special function {fn}")


def answer(case):
    kind = case["kind"]
    if kind == "test":
        arms = case["arms"]
        return {"comparisons": [run_test(case, arms[0], t) for t in arms[1:]]}
    if kind == "srm":
        return {"p_value": num(check_srm(case["users"], case["weights"]))}
    if kind == "bh":
        return {"adjusted": [float(x) for x in scipy.stats.false_discovery_control(case["p_values"], method="bh")]}
    if kind == "special":
        return {"value": num(special(case["fn"], case["args"]))}
    raise ValueError(f"unknown case kind {kind}")


def main():
    cases = json.load(sys.stdin)
    json.dump([answer(c) for c in cases], sys.stdout)


if __name__ == "__main__":
    main()
