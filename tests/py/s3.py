"""Looks into the S3 server the blob storage tests start: `s3.py ENDPOINT create BUCKET` makes a
bucket; `s3.py ENDPOINT state BUCKET` prints its objects and open multipart uploads as JSON."""
import json
import sys

import boto3

endpoint, command, bucket = sys.argv[1:4]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    aws_access_key_id="test-key",
    aws_secret_access_key="test-secret",
    region_name="us-east-1",
)
if command == "create":
    s3.create_bucket(Bucket=bucket)
elif command == "state":
    objects = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    uploads = [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    print(json.dumps({"objects": objects, "uploads": uploads}))
else:
    sys.exit(f"unknown command {command}")
