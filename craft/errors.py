"""User-facing errors: the CLI prints their message and exits, without a traceback."""


class CraftError(Exception):
    """A problem the user can fix (bad config, bad input file, missing data)."""


class ConfigError(CraftError):
    """A gin file, gin flag or configuration value that cannot be used."""


class DataError(CraftError):
    """An input file, corpus or prepared dataset that cannot be used."""
