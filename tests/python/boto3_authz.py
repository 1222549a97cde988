"""Authorization that never fails open, through boto3 against `envol kms
serve`, each refusal checked by its AWS error code.

Usage:
  boto3_authz.py refusals ENDPOINT ROOT_AKID ROOT_SECRET ACCOUNT
      empty grant constraints, duplicate-key policies, alias/AWS/...
  boto3_authz.py before ENDPOINT ROOT_AKID ROOT_SECRET ACCOUNT ALICE_AKID ALICE_SECRET STATE
      a key whose policy names alice, a key with a grant to alice; alice
      uses both; what the next phase needs goes to the file STATE
  boto3_authz.py after ENDPOINT ROOT_AKID ROOT_SECRET ACCOUNT ALICE_AKID ALICE_SECRET STATE
      alice was removed and re-created: she gets nothing of the old alice's
  boto3_authz.py secure-transport HTTPS_ENDPOINT HTTP_ENDPOINT CA_BUNDLE ROOT_AKID ROOT_SECRET ACCOUNT
      a key policy denying requests where aws:SecureTransport is false:
      plain HTTP is denied, HTTPS allowed
Exits non-zero (with a traceback) on the first deviation.
"""

import base64
import json
import sys

from boto3_kms import client, error_code

CONTEXT = {"envol:volume": "vol-1"}


def expect(code, call):
    got = error_code(call)
    assert got == code, f"expected {code}, got {got}"


def refusals(endpoint, akid, secret, account):
    kms = client(endpoint, akid, secret)
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    root_arn = f"arn:aws:iam::{account}:root"

    # An empty constraint is refused, not stored as "no constraint".
    for member in ("EncryptionContextEquals", "EncryptionContextSubset"):
        expect(
            "ValidationException",
            lambda: kms.create_grant(
                KeyId=key,
                GranteePrincipal=root_arn,
                Operations=["Decrypt"],
                Constraints={member: {}},
            ),
        )
    assert kms.list_grants(KeyId=key)["Grants"] == [], "nothing was stored"
    # A non-empty one is still accepted.
    kms.create_grant(
        KeyId=key,
        GranteePrincipal=root_arn,
        Operations=["Decrypt"],
        Constraints={"EncryptionContextEquals": CONTEXT},
    )

    # Duplicate keys: the reader would see Deny, serde_json keep Allow.
    duplicate = (
        '{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Effect":"Allow",'
        f'"Principal":{{"AWS":"{root_arn}"}},"Action":"kms:*","Resource":"*"}}]}}'
    )
    before = kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"]
    expect(
        "MalformedPolicyDocumentException",
        lambda: kms.put_key_policy(KeyId=key, PolicyName="default", Policy=duplicate),
    )
    expect("MalformedPolicyDocumentException", lambda: kms.create_key(Policy=duplicate))
    nested = (
        '{"Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:*",'
        '"Resource":"*","Condition":{"StringEquals":{"kms:EncryptionContext:a":"1",'
        '"kms:EncryptionContext:a":"2"}}}]}'
    )
    expect(
        "MalformedPolicyDocumentException",
        lambda: kms.put_key_policy(KeyId=key, PolicyName="default", Policy=nested),
    )
    assert kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"] == before

    # A user of the account that does not exist cannot be named: nothing is
    # bound to a name waiting for a user to be created under it.
    nobody = f"arn:aws:iam::{account}:user/nosuch"
    naming_nobody = json.dumps(
        {
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": root_arn}, "Action": "kms:*", "Resource": "*"},
                {"Effect": "Allow", "Principal": {"AWS": nobody}, "Action": "kms:*", "Resource": "*"},
            ]
        }
    )
    expect(
        "MalformedPolicyDocumentException",
        lambda: kms.put_key_policy(KeyId=key, PolicyName="default", Policy=naming_nobody),
    )
    expect(
        "ValidationException",
        lambda: kms.create_grant(KeyId=key, GranteePrincipal=nobody, Operations=["Decrypt"]),
    )
    assert kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"] == before

    # alias/aws/ is reserved in any case.
    kms.create_alias(AliasName="alias/mine", TargetKeyId=key)
    for name in ("alias/AWS/x", "alias/aws/x", "alias/Aws/ebs"):
        expect("NotAuthorizedException", lambda: kms.create_alias(AliasName=name, TargetKeyId=key))
        expect("NotAuthorizedException", lambda: kms.update_alias(AliasName=name, TargetKeyId=key))
        expect("NotAuthorizedException", lambda: kms.delete_alias(AliasName=name))
    names = [a["AliasName"] for a in kms.list_aliases()["Aliases"]]
    assert names == ["alias/mine"], names
    print("boto3 authz refusals: ok")


def before(endpoint, akid, secret, account, alice_akid, alice_secret, state_file):
    root = client(endpoint, akid, secret)
    alice = client(endpoint, alice_akid, alice_secret)
    alice_arn = f"arn:aws:iam::{account}:user/alice"
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                "Effect": "Allow",
                "Principal": {"AWS": alice_arn},
                "Action": ["kms:Decrypt", "kms:DescribeKey"],
                "Resource": "*",
            },
        ],
    }
    by_policy = root.create_key(Policy=json.dumps(policy))["KeyMetadata"]["KeyId"]
    by_grant = root.create_key()["KeyMetadata"]["KeyId"]
    grant_id = root.create_grant(
        KeyId=by_grant,
        GranteePrincipal=alice_arn,
        Operations=["Decrypt", "DescribeKey"],
        Constraints={"EncryptionContextSubset": CONTEXT},
    )["GrantId"]
    blobs = {}
    for name, key in (("policy", by_policy), ("grant", by_grant)):
        blob = root.encrypt(KeyId=key, Plaintext=b"secret", EncryptionContext=CONTEXT)[
            "CiphertextBlob"
        ]
        # The alice of now may use both.
        out = alice.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT)
        assert out["Plaintext"] == b"secret"
        alice.describe_key(KeyId=key)
        blobs[name] = base64.b64encode(blob).decode()
    # GetKeyPolicy shows the policy as written (ARNs, not ids).
    shown = root.get_key_policy(KeyId=by_policy, PolicyName="default")["Policy"]
    assert alice_arn in shown and "AIDA" not in shown, shown
    with open(state_file, "w") as f:
        json.dump(
            {"policy_key": by_policy, "grant_key": by_grant, "grant_id": grant_id, "blobs": blobs},
            f,
        )
    print("boto3 authz before: ok")


def after(endpoint, akid, secret, account, alice_akid, alice_secret, state_file):
    with open(state_file) as f:
        state = json.load(f)
    root = client(endpoint, akid, secret)
    alice = client(endpoint, alice_akid, alice_secret)
    alice_arn = f"arn:aws:iam::{account}:user/alice"
    for name, key in (("policy", state["policy_key"]), ("grant", state["grant_key"])):
        blob = base64.b64decode(state["blobs"][name])
        expect(
            "AccessDeniedException",
            lambda: alice.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT),
        )
        expect("AccessDeniedException", lambda: alice.describe_key(KeyId=key))
        # The root still can: the key is fine, only the new alice is not the old.
        assert root.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT)["Plaintext"] == b"secret"
    # The old grant is still listed under alice's ARN, but authorizes nobody.
    grants = root.list_grants(KeyId=state["grant_key"])["Grants"]
    assert [(g["GrantId"], g["GranteePrincipal"]) for g in grants] == [
        (state["grant_id"], alice_arn)
    ], grants
    # Granting the new alice works again, through a new grant.
    root.create_grant(
        KeyId=state["grant_key"],
        GranteePrincipal=alice_arn,
        Operations=["DescribeKey"],
    )
    alice.describe_key(KeyId=state["grant_key"])
    print("boto3 authz after: ok")


def secure_transport(https, http, ca, akid, secret, account):
    over_tls = client(https, akid, secret, verify=ca)
    plain = client(http, akid, secret)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                "Sid": "DenyPlainHTTP",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "kms:*",
                "Resource": "*",
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
        ],
    }
    key = over_tls.create_key(Policy=json.dumps(policy))["KeyMetadata"]["KeyId"]
    blob = over_tls.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=CONTEXT)["CiphertextBlob"]
    assert over_tls.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT)["Plaintext"] == b"x"
    over_tls.describe_key(KeyId=key)
    expect("AccessDeniedException", lambda: plain.describe_key(KeyId=key))
    expect(
        "AccessDeniedException",
        lambda: plain.decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT),
    )
    expect(
        "AccessDeniedException",
        lambda: plain.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=CONTEXT),
    )
    # A key without the Deny is usable over plain HTTP as before.
    other = plain.create_key()["KeyMetadata"]["KeyId"]
    plain.describe_key(KeyId=other)
    print("boto3 authz secure transport: ok")


if __name__ == "__main__":
    phase, args = sys.argv[1], sys.argv[2:]
    {
        "refusals": refusals,
        "before": before,
        "after": after,
        "secure-transport": secure_transport,
    }[phase](*args)
