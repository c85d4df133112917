"""trustlab.explain: attributions behind one interface over Captum, and the checks that judge them.

``Explainer(model, method).attribute(inputs, target=..., baselines=...)`` for every registered
method (``available_methods()``, ``methods_for(model_facts(...))``); adaptive-step Integrated
Gradients; sanity checks (parameter/data randomisation); faithfulness (deletion/insertion,
infidelity, sensitivity); TCAV; attention rollout; fairness × explanation.
"""

from trustlab.explain.importance import feature_mask, fold_groups, global_importance
from trustlab.explain.integrated import IGResult, adaptive_integrated_gradients
from trustlab.explain.methods import (Explainer, MethodInfo, ModelFacts, available_methods,
                                      method_info, methods_for, model_facts, predicted_target,
                                      register_method)
from trustlab.explain import rollout  # noqa: F401  (registers AttentionRollout)

__all__ = ["Explainer", "IGResult", "MethodInfo", "ModelFacts", "adaptive_integrated_gradients",
           "available_methods", "feature_mask", "fold_groups", "global_importance", "method_info",
           "methods_for", "model_facts", "predicted_target", "register_method"]
