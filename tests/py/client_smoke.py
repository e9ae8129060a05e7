"""Drives a UES node with the Python SDK (`atproto` on PyPI), unchanged:
    python client_smoke.py http://127.0.0.1:PORT
Prints one JSON line; exits non-zero on the first failure."""
import json
import sys
import time

from atproto import Client, models

url = sys.argv[1]
out = {}
try:
    client = Client(base_url=url)
    handle = f"py{int(time.time() * 1000) % 10**9}.test"
    client.com.atproto.server.create_account(
        models.ComAtprotoServerCreateAccount.Data(handle=handle, password="correct horse battery")
    )
    client.login(handle, "correct horse battery", fetch_bsky_profile=False)
    did = client.com.atproto.server.get_session().did
    out["did"] = did
    post = client.send_post(text="hello from python", profile_identify=did)
    rkey = post.uri.rsplit("/", 1)[1]
    got = client.com.atproto.repo.get_record({"repo": did, "collection": "app.bsky.feed.post", "rkey": rkey})
    assert got.value.text == "hello from python", got
    listed = client.com.atproto.repo.list_records({"repo": did, "collection": "app.bsky.feed.post", "limit": 10})
    assert len(listed.records) == 1, listed
    blob = client.upload_blob(b"\x89PNG fake image bytes")
    assert blob.blob.size == 21, blob
    client.delete_post(post.uri)
    listed = client.com.atproto.repo.list_records({"repo": did, "collection": "app.bsky.feed.post", "limit": 10})
    assert len(listed.records) == 0, listed
    out["ok"] = True
except Exception as e:  # report, then fail
    out["ok"] = False
    out["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
sys.exit(0 if out["ok"] else 1)
