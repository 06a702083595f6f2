"""s3-postbox agent: uploads finished files from a watched folder through a pre-signed POST grant.

It holds no AWS credentials and never imports boto3.
"""

from importlib.metadata import PackageNotFoundError, version

try:  # the one version is pyproject.toml's, read from what pip installed
    __version__ = version("s3-postbox")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"
