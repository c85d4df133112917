"""Our batched torch PGD against ART's ``ProjectedGradientDescent`` (same model, ε, steps, step
size, one random start): robust accuracy and the speed ratio.

    flock /tmp/trustlab-bench.lock python benchmarks/pgd.py [--checkpoint DIR] [--eps 0.1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _robust_common import add_arguments, load_subject, sample

from trustlab.attacks.art_adapter import art_classifier
from trustlab.attacks.evasion import evaluate_attack, make_threat, pgd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    subject = load_subject(args)
    model, X, y, domain = sample(subject)
    from art.attacks.evasion import ProjectedGradientDescent

    started = time.perf_counter()
    ours = pgd(model, X, y, make_threat(domain, args.eps), steps=args.steps)
    ours_s = time.perf_counter() - started
    attack = ProjectedGradientDescent(art_classifier(subject.clean_model(), subject.data),
                                      norm=np.inf, eps=args.eps, eps_step=2.5 * args.eps / args.steps,
                                      max_iter=args.steps, num_random_init=1, batch_size=512,
                                      verbose=False)
    started = time.perf_counter()
    theirs = attack.generate(X, y=y)
    art_s = time.perf_counter() - started
    print(f"PGD-{args.steps} L∞ ε={args.eps} on {len(y)} points")
    print(f"ours: robust accuracy {evaluate_attack(model, X, y, ours).robust_accuracy:.3f} "
          f"in {ours_s:.2f} s")
    print(f"ART:  robust accuracy {evaluate_attack(model, X, y, theirs).robust_accuracy:.3f} "
          f"in {art_s:.2f} s; ART/ours time {art_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
