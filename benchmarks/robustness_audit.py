"""The full-tier robustness audit of the digits CNN: the headline figures and the seconds each
sub-analysis took.

    flock /tmp/trustlab-bench.lock python benchmarks/robustness_audit.py [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import time

from _robust_common import add_arguments, load_subject

from trustlab.audit.runner import audit

HEADLINES = ("clean_accuracy", "pgd_linf.eps_0p1.robust_accuracy",
             *(f"autoattack.eps_{e}.robust_accuracy" for e in ("0p05", "0p1", "0p2", "0p3")),
             "certified.r_0p25.accuracy", "certified.r_0p5.accuracy",
             "backdoor.clean_accuracy", "backdoor.attack_success_rate",
             "backdoor.detector_precision", "backdoor.detector_recall",
             "detector.detection_rate", "detector.false_positive_rate",
             "distillation.clean_accuracy", "distillation.pgd_linf.eps_0p1.robust_accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--tier", default="full", choices=("smoke", "full"))
    args = parser.parse_args()
    subject = load_subject(args)
    started = time.perf_counter()
    result = audit(subject, auditors=["robustness"], tier=args.tier, show_progress=False).results[0]
    wall = time.perf_counter() - started
    print(f"status {result.status} {result.error or ''}")
    for name, metric in sorted(result.metrics.items()):
        if name.removeprefix("robustness.") in HEADLINES or ".masking." in name or "errored" in name:
            ci = f" [{metric.ci_low:.3f}, {metric.ci_high:.3f}]" if metric.ci_low is not None else ""
            print(f"{name:60s} {metric.value:.3f}{ci}")
    seconds = result.config.get("seconds", {})
    for name, s in sorted(seconds.items(), key=lambda kv: -kv[1]):
        print(f"  {name:24s} {s:7.1f} s")
    print(f"robustness audit ({args.tier}, {args.threads} threads): {wall:.1f} s")


if __name__ == "__main__":
    main()
