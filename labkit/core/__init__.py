"""The framework: scenarios and variants, trials and their results, the runner, A/B statistics."""
