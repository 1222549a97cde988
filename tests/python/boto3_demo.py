"""AWS's KMS demo flow, end to end, with boto3 against `envol kms serve`.

Usage: boto3_demo.py ENDPOINT CREDENTIALS_FILE CONFIG_FILE
Profiles `envol-root`, `myadmin` and `S3DemoUser` must exist in the files.
Exits non-zero (with a traceback) on the first deviation.
"""

import json
import os
import sys

import boto3

from boto3_kms import error_code

endpoint, creds, config = sys.argv[1:4]
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = creds
os.environ["AWS_CONFIG_FILE"] = config


def kms(profile):
    return boto3.Session(profile_name=profile).client("kms", endpoint_url=endpoint)


root, admin, demo = kms("envol-root"), kms("myadmin"), kms("S3DemoUser")
account = root.create_key(Description="probe")["KeyMetadata"]["AWSAccountId"]

key = root.create_key(Description="DemoKey for the boto3 walkthrough")["KeyMetadata"]
key_id = key["KeyId"]
root.create_alias(AliasName="alias/DemoKey", TargetKeyId=key_id)
policy = {
    "Version": "2012-10-17",
    "Statement": [
        {"Sid": "root", "Effect": "Allow",
         "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "admin", "Effect": "Allow",
         "Principal": {"AWS": f"arn:aws:iam::{account}:user/myadmin"},
         "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey*"],
         "Resource": "*"},
    ],
}
root.put_key_policy(KeyId=key_id, PolicyName="default", Policy=json.dumps(policy))

ct = admin.encrypt(KeyId="alias/DemoKey", Plaintext=b"demo secret",
                   EncryptionContext={"app": "demo"})["CiphertextBlob"]
pt = admin.decrypt(CiphertextBlob=ct, EncryptionContext={"app": "demo"})["Plaintext"]
assert pt == b"demo secret", pt

assert error_code(lambda: demo.decrypt(CiphertextBlob=ct, EncryptionContext={"app": "demo"})) \
    == "AccessDeniedException"
assert error_code(lambda: demo.encrypt(KeyId="alias/DemoKey", Plaintext=b"x")) \
    == "AccessDeniedException"

root.disable_key(KeyId=key_id)
assert error_code(lambda: admin.decrypt(CiphertextBlob=ct, EncryptionContext={"app": "demo"})) \
    == "DisabledException"
assert root.describe_key(KeyId="alias/DemoKey")["KeyMetadata"]["KeyState"] == "Disabled"

out = root.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
assert out["KeyState"] == "PendingDeletion", out
assert error_code(lambda: admin.decrypt(CiphertextBlob=ct, EncryptionContext={"app": "demo"})) \
    == "KMSInvalidStateException"
print("boto3 demo flow: ok")
