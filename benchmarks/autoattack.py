"""Our AutoAttack (standing points only) against ART's ``AutoAttack`` (defaults) on the digits
CNN at L∞ ε: robust accuracy and wall time side by side.

    flock /tmp/trustlab-bench.lock timeout 3000 python benchmarks/autoattack.py [--checkpoint DIR]
        [--eps 0.1] [--skip-art]

Acceptance: ours ≤ ART's robust accuracy + 0.01 in ≤ 20% of ART's time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _robust_common import add_arguments, load_subject, sample

from trustlab.attacks.art_adapter import art_classifier
from trustlab.attacks.autoattack import autoattack
from trustlab.attacks.evasion import evaluate_attack, make_threat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--skip-art", action="store_true", help="time ours only")
    args = parser.parse_args()
    subject = load_subject(args)
    model, X, y, domain = sample(subject)
    started = time.perf_counter()
    ours = autoattack(model, X, y, subject.data, make_threat(domain, args.eps))
    ours_s = time.perf_counter() - started
    print(f"points {len(y)}, clean accuracy {ours.stages[0]['robust_accuracy']:.3f}, "
          f"L∞ ε={args.eps}")
    for stage in ours.stages[1:]:
        print(f"  ours {stage['name']:9} attacked {stage['attacked']:4} -> robust "
              f"{stage['robust_accuracy']:.3f} in {stage['seconds']:.1f} s")
    print(f"ours: robust accuracy {ours.robust_accuracy:.3f} in {ours_s:.1f} s")
    if args.skip_art:
        return
    from art.attacks.evasion import AutoAttack

    np.random.seed(0)
    attack = AutoAttack(art_classifier(subject.clean_model(), subject.data), norm=np.inf,
                        eps=args.eps)  # ART's defaults otherwise
    started = time.perf_counter()
    X_art = attack.generate(X, y=y)
    art_s = time.perf_counter() - started
    art_acc = evaluate_attack(model, X, y, X_art).robust_accuracy
    print(f"ART:  robust accuracy {art_acc:.3f} in {art_s:.1f} s")
    verdict = ours.robust_accuracy <= art_acc + 0.01 and ours_s <= 0.2 * art_s
    print(f"ours/ART time {ours_s / art_s:.3f}; robust accuracy difference "
          f"{ours.robust_accuracy - art_acc:+.3f} -> {'PASS' if verdict else 'FAIL'}")


if __name__ == "__main__":
    main()
