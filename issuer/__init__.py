"""s3-postbox issuer: signs POST grants with the operator's AWS credentials, renders user-data."""

__version__ = "0.1.0"
