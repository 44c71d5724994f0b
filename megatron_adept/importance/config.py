"""Names of the unit-importance estimators (light: flags are checked before torch loads)."""

ESTIMATORS = ("abs-gradient", "authors")
"""Values of ``--unit-importance``: mean |θ·∂L/∂θ| of the corpus-mean gradient, or the authors'
mean over probe micro-batches of |θ|·|∂L_b/∂θ|."""
