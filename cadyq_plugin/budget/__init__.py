"""The bit budget: train CADyQ to a target FAB or BitOPs (docs/bit_budget.md).

- :mod:`.target`: the budget of a run, read once from the options (:func:`~.target.budget_spec`), resolved against a
  network (:class:`~.target.BitBudget`: the target as a mean bit, what each selector's bits cost);
- :mod:`.controller`: the price on the selectors' logits that holds it, its settings and their check;
- :mod:`.report`: where it is reported (validation log, TensorBoard, results tables);
- :mod:`.check`: the options check of a budget (a target the selectors can reach), called by the options check.
"""
