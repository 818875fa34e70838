"""One module per failure mode, its broken variant and its fixes side by side.

Each module defines a :class:`labkit.Scenario` and registers it; ``labkit.core.scenario`` imports them
lazily, so listing scenarios never imports torch.
"""
