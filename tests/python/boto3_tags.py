"""Key tags with boto3 against `envol kms serve`: CreateKey's Tags,
TagResource, UntagResource, ListResourceTags (with boto3's own paginator),
and the errors AWS gives for bad tags and keys pending deletion.

Usage: boto3_tags.py ENDPOINT ACCESS_KEY_ID SECRET
Exits non-zero (with a traceback) on the first deviation.
"""

import sys

from boto3_kms import client, error_code

endpoint, akid, secret = sys.argv[1:4]
kms = client(endpoint, akid, secret)


def tags_of(key_id, page_size):
    pages = kms.get_paginator("list_resource_tags").paginate(
        KeyId=key_id, PaginationConfig={"PageSize": page_size}
    )
    return [(t["TagKey"], t["TagValue"]) for p in pages for t in p["Tags"]]


key_id = kms.create_key(Tags=[{"TagKey": "team", "TagValue": "storage"}])[
    "KeyMetadata"
]["KeyId"]
assert tags_of(key_id, 50) == [("team", "storage")], tags_of(key_id, 50)

kms.tag_resource(
    KeyId=key_id,
    Tags=[{"TagKey": f"k{i}", "TagValue": str(i)} for i in range(7)]
    + [{"TagKey": "team", "TagValue": "platform"}],
)
expected = [(f"k{i}", str(i)) for i in range(7)] + [("team", "platform")]
assert tags_of(key_id, 3) == expected, tags_of(key_id, 3)

kms.untag_resource(KeyId=key_id, TagKeys=["k0", "k1", "absent"])
assert tags_of(key_id, 50) == expected[2:], tags_of(key_id, 50)

bad = [{"TagKey": "aws:mine", "TagValue": "x"}]
assert error_code(lambda: kms.tag_resource(KeyId=key_id, Tags=bad)) == "TagException"
assert error_code(lambda: kms.create_key(Tags=bad)) == "TagException"

kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
assert (
    error_code(
        lambda: kms.tag_resource(KeyId=key_id, Tags=[{"TagKey": "a", "TagValue": "b"}])
    )
    == "KMSInvalidStateException"
)
assert (
    error_code(lambda: kms.untag_resource(KeyId=key_id, TagKeys=["team"]))
    == "KMSInvalidStateException"
)
assert tags_of(key_id, 50) == expected[2:]

print("boto3 tags: ok")
