"""Model inversion of the digits CNN: how often an independent classifier recognises the
reconstructions (chance 10%), for our regularised inversion and ART's MIFace.

    .venv/bin/python benchmarks/inversion_digits.py [--checkpoint DIR] [--seeds 5]
        [--steps 500] [--miface-iter 1000] [--image docs/inversion_digits.png]

The evaluation classifier is a logistic regression fitted on the test split only (it never sees
the model or its training rows). Each seed reconstructs every class once; the image shows the
class means of the training split, then one row per method (seed 0).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.linear_model import LogisticRegression

from trustlab.attacks.inversion import image_grid, inversion_quality, miface, regularised_inversion
from trustlab.attacks.membership import art_classifier
from trustlab.train.subject import Subject
from trustlab.train.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a digits CNN checkpoint (default: train one)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--miface-iter", type=int, default=1000)
    parser.add_argument("--image", default="docs/inversion_digits.png")
    args = parser.parse_args()
    subject = (Subject.from_checkpoint(args.checkpoint) if args.checkpoint
               else Subject.from_trained(train("cnn", "digits"), "digits-cnn", None))
    test, members = subject.split("test"), subject.split("train")
    evaluator = LogisticRegression(max_iter=2000).fit(test.X.reshape(len(test), -1), test.y)
    means = np.stack([members.X[members.y == k].mean(0) for k in range(10)])
    shape = tuple(subject.data.input_shape)
    methods = {
        "regularised": lambda seed: regularised_inversion(subject.clean_model(), 10, shape,
                                                          steps=args.steps, seed=seed),
        "miface": lambda seed: miface(art_classifier(subject.clean_model(), shape, 10,
                                                     subject.data.value_range), 10, shape,
                                      max_iter=args.miface_iter),
    }
    rows = {"class means": means}
    noise = np.random.default_rng(0).random((10, *shape))
    print(f"evaluation classifier on noise images: "
          f"{inversion_quality(evaluator.predict, noise, means).eval_accuracy:.0%} (chance 10%)")
    for name, invert in methods.items():
        started = time.perf_counter()
        # MIFace is deterministic (it starts from a constant image): one run says it all
        seeds = range(args.seeds) if name == "regularised" else range(1)
        images = [invert(seed) for seed in seeds]
        qualities = [inversion_quality(evaluator.predict, batch, means) for batch in images]
        rows[name] = images[0]
        print(f"{name:12} recognised {np.mean([q.eval_accuracy for q in qualities]):.0%} of "
              f"{10 * len(images)} reconstructions; distance to the class mean "
              f"{np.mean([q.mean_distance for q in qualities]):.2f} (a grey image: "
              f"{qualities[0].baseline_distance:.2f}); {time.perf_counter() - started:.1f} s")
    image_grid(rows, args.image)
    print(f"wrote {args.image}")


if __name__ == "__main__":
    main()
