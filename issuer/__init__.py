"""s3-postbox issuer: signs POST grants with the operator's AWS credentials, renders user-data."""

from agent import __version__  # one distribution, one version

__all__ = ["__version__"]
