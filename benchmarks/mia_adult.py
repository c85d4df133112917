"""Membership inference on the issue's reference configuration; prints every acceptance figure.

    python benchmarks/mia_adult.py [--references 16] [--epochs 40] [--seed 0] [--skip-64]

Adult MLP 256-256 on 5,000 of a 10,000-row population (the rest are its non-members), trained
without regularisation to overfit; reference models each on a random half of the population,
all trained at once. Prints AUC and TPR@0.1%/1% FPR for loss threshold, ART black-box (random
forest, cross-fitted), shadow, LiRA online (shrunk and fixed variance)/offline and RMIA; then LiRA
vs RMIA with 4 reference models; then LiRA and RMIA end to end with 64 batched reference models
(training, outputs and scores, timed). Reference figures of the issue:
loss AUC 0.557; ART AUC 0.598, TPR@1% 1.1%; LiRA online AUC 0.643, TPR@0.1% 2.5%, TPR@1% 6.4%.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from trustlab.attacks.membership import (art_blackbox_scores, art_classifier, lira_scores,
                                         logit_confidence, loss_scores, reference_attack_scores,
                                         shadow_attack_scores)
from trustlab.attacks.reference_models import RecipeSettings, train_reference_models
from trustlab.privacy.audit import epsilon_lower_bound, mia_metrics
from trustlab.train.data import load_dataset
from trustlab.train.trainer import input_spec_for

CONFIG = {"hidden": [256, 256], "dropout": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--references", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-64", action="store_true", help="skip the 64-model run")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_dataset("adult", seed=args.seed)
    rng = np.random.default_rng(args.seed)
    population = rng.choice(len(data.splits["train"]), 10_000, replace=False)
    X, y = data.splits["train"].X[population], data.splits["train"].y[population]
    z = data.splits["test"]
    spec = input_spec_for(data)
    recipe = RecipeSettings(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                            weight_decay=0.0)
    is_member = np.zeros(len(X), bool)
    is_member[rng.permutation(len(X))[:5000]] = True
    target = train_reference_models("mlp", spec, X, y, n_models=1, config=CONFIG, recipe=recipe,
                                    masks=is_member[None], seed=args.seed + 100)
    logits = target.outputs(X)[0]
    correct = logits.argmax(1) == y
    print(f"target: train accuracy {correct[is_member].mean():.3f}, held-out accuracy "
          f"{correct[~is_member].mean():.3f}")
    started = time.perf_counter()
    refs = train_reference_models("mlp", spec, X, y, n_models=args.references, config=CONFIG,
                                  recipe=recipe, seed=args.seed + 1, show_progress=True)
    print(f"{args.references} reference models (batched): {time.perf_counter() - started:.1f} s")
    ref_logits, target_z, ref_z = refs.outputs(X), target.outputs(z.X)[0], refs.outputs(z.X)
    scores = {"loss_threshold": loss_scores(logits, y)}
    model = target.model(0)
    scores["art_blackbox"] = art_blackbox_scores(art_classifier(model, (X.shape[1],), 2), X, y,
                                                 is_member, logits=logits, seed=args.seed)
    scores["shadow"] = shadow_attack_scores(ref_logits, refs.masks, y, logits, y, seed=args.seed)
    scores.update(reference_attack_scores(logits, ref_logits, refs.masks, y, target_z, ref_z, z.y))
    scores["lira_fixed_var"] = lira_scores(logit_confidence(logits, y),
                                           logit_confidence(ref_logits, y), refs.masks,
                                           variance="fixed")
    four = train_reference_models("mlp", spec, X, y, n_models=4, config=CONFIG, recipe=recipe,
                                  seed=args.seed + 3)
    small = reference_attack_scores(logits, four.outputs(X), four.masks, y, target_z,
                                    four.outputs(z.X), z.y)
    scores["lira@4"], scores["rmia@4"] = small["lira"], small["rmia"]
    print(f"{'attack':16} {'AUC':>7} {'TPR@0.1%':>9} {'TPR@1%':>8}   (95% CI of TPR@0.1%)")
    graded = {}
    for attack, values in scores.items():
        graded[attack] = m = mia_metrics(values, is_member, seed=args.seed)
        low, high = m.at_fpr[0.001].ci
        print(f"{attack:16} {m.auc:7.3f} {m.at_fpr[0.001].tpr:9.2%} {m.at_fpr[0.01].tpr:8.2%}"
              f"   ({low:.2%}, {high:.2%})")
    loss, lira = graded["loss_threshold"].at_fpr[0.001].tpr, graded["lira"].at_fpr[0.001].tpr
    print(f"LiRA / loss TPR@0.1%FPR: {lira / max(loss, 1 / 5000):.1f}x "
          f"(loss TPR {loss:.2%}; a 0 is floored at one member in 5,000)")
    print(f"empirical epsilon (LiRA scores, one-run bound): "
          f"{epsilon_lower_bound(scores['lira'], is_member, delta=1e-5).epsilon:.3f}")
    if not args.skip_64:
        started = time.perf_counter()
        refs = train_reference_models("mlp", spec, X, y, n_models=64, config=CONFIG,
                                      recipe=recipe, seed=args.seed + 2, show_progress=True)
        big = reference_attack_scores(logits, refs.outputs(X), refs.masks, y, target_z,
                                      refs.outputs(z.X), z.y)
        elapsed = time.perf_counter() - started
        for attack in ("lira", "rmia"):
            m = mia_metrics(big[attack], is_member, seed=args.seed)
            print(f"{attack + '@64':16} {m.auc:7.3f} {m.at_fpr[0.001].tpr:9.2%} "
                  f"{m.at_fpr[0.01].tpr:8.2%}")
        print(f"LiRA and RMIA with 64 reference models, end to end (training, outputs, scores): "
              f"{elapsed:.1f} s on {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
