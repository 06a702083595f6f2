"""s3-postbox issuer: signs POST grants with the operator's AWS credentials, renders user-data."""

from importlib import resources

from agent import __version__  # one distribution, one version

__all__ = ["__version__", "packaged"]


def packaged(name: str) -> str:
    """A file shipped in the wheel (issuer/data/: the unit and the installer, the same files as
    systemd/ and cloud-init/, and the upload page)."""
    return resources.files("issuer").joinpath("data").joinpath(name).read_text(encoding="utf-8")
