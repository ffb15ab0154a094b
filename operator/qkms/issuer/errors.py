"""The one error of the issuer's pure parts."""


class Refused(ValueError):
    """A request (or an issuer) that cannot be honoured; the message says why."""
