"""One process per trial: warm templates or fresh interpreters, timeouts, stillness, stacks, clean-up."""
