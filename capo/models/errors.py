"""The error every model loader raises (``capo.models``, its diffusers backends, the shapes zoo)."""


class ModelLoadError(RuntimeError):
    """A model or checkpoint that cannot be loaded; the message says what to provide."""
