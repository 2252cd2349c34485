"""VP SDE configs trained for likelihood (ScoreFlow's likelihood weighting with importance
sampling; ``configs.default_configs.maximum_likelihood``)."""
