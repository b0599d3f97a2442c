"""Reference for the S3 drain benchmark (benches/uplink.rs): the same
envelopes, read from a neuroedge journal, stored with boto3 `put_object` in
a tight loop by N threads sharing one client (as the backend team would
write a bulk loader), with the same content type and as many metadata
fields as neuroedge sends. No ordering, no journal marks.

    s3_put_reference.py --endpoint URL --bucket B --journal J.db --concurrency N
        [--count-prefix P]   (first count the objects already under P)

Prints one JSON object: {"objects": n, "bytes": b, "secs": s}. The clock
starts after the envelopes are read and the client is made."""
import argparse, json, sqlite3, sys, threading, time

import boto3
from botocore.config import Config


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--journal", required=True)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--prefix", default="reference")
    ap.add_argument("--count-prefix", help="first count the objects under this prefix")
    a = ap.parse_args()

    db = sqlite3.connect(f"file:{a.journal}?mode=ro", uri=True)
    rows = db.execute(
        "SELECT batch_id, device_id, seq, first_sample, n_samples, t_start, t_end, key_id, envelope"
        " FROM batches ORDER BY id"
    ).fetchall()
    db.close()
    s3 = boto3.client(
        "s3", endpoint_url=a.endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"},
                      max_pool_connections=max(10, a.concurrency),
                      retries={"max_attempts": 1}))
    counted = None
    if a.count_prefix is not None:
        counted = sum(p.get("KeyCount", 0) for p in s3.get_paginator("list_objects_v2").paginate(
            Bucket=a.bucket, Prefix=a.count_prefix))
    next_i = [0]
    lock = threading.Lock()
    errors = []

    def worker():
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= len(rows) or errors:
                return
            batch_id, device, seq, first, n, t0_, t1_, key_id, env = rows[i]
            try:
                s3.put_object(
                    Bucket=a.bucket, Key=f"{a.prefix}/{device}/{seq:012d}-{batch_id}.nebatch",
                    Body=env, ContentType="application/cbor",
                    Metadata={"neuroedge-seq": str(seq), "neuroedge-first-sample": str(first),
                              "neuroedge-n-samples": str(n), "neuroedge-t-start": repr(t0_),
                              "neuroedge-t-end": repr(t1_), "neuroedge-key-id": key_id})
            except Exception as e:  # noqa: BLE001 - reported, then the run fails
                errors.append(f"{batch_id}: {e}")
                return

    threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.monotonic() - t0
    if errors:
        print(f"s3_put_reference: {len(errors)} failed, first: {errors[0]}", file=sys.stderr)
        return 1
    print(json.dumps({"objects": len(rows), "bytes": sum(len(r[-1]) for r in rows), "secs": secs,
                      "counted": counted}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
