"""s3-postbox agent: uploads finished files from a watched folder through a pre-signed POST grant.

It holds no AWS credentials and never imports boto3.
"""

__version__ = "0.1.0"
