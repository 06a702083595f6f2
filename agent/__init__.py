"""s3-postbox agent: uploads finished files from a watched folder through a pre-signed POST grant.

It holds no AWS credentials and never imports boto3.
"""


def __getattr__(name: str) -> str:
    """`__version__`, read when first asked for (importlib.metadata brings in the email and
    socket modules: the pure core, agent/core.py, must not have them come with the package)."""
    if name != "__version__":
        raise AttributeError(f"module 'agent' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415  (lazily)

    try:  # the one version is pyproject.toml's, read from what pip installed
        found = version("s3-postbox")
    except PackageNotFoundError:  # a source tree that was never installed
        found = "unknown"
    globals()["__version__"] = found
    return found
