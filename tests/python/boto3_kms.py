"""What the boto3 test scripts beside this file share: a KMS client for an
access key, and the AWS error code of a call that must fail.

Scripts run as `python3 tests/python/NAME.py`, so this directory is on
`sys.path` and `from boto3_kms import ...` finds this file.
"""

import boto3
from botocore.exceptions import ClientError


def client(endpoint, akid, secret, verify=None):
    """A boto3 KMS client for one access key (`verify`: a CA bundle for HTTPS)."""
    return boto3.client(
        "kms",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=akid,
        aws_secret_access_key=secret,
        verify=verify,
    )


def error_code(call):
    """The AWS error code `call()` fails with; an AssertionError if it succeeds."""
    try:
        call()
    except ClientError as e:
        return e.response["Error"]["Code"]
    raise AssertionError("the call should have failed")
