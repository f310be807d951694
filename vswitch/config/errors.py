"""The one error of the config layer."""


class ConfigError(Exception):
    """A command line or configuration the user must fix; str() is the one line we print."""
