"""The backend team's side of the S3 sink (contract §11), with boto3 and
ordinary libraries: list a bucket, fetch every object, check its key and
metadata against the envelope's authenticated header, decrypt and decode
it. Also makes a bucket (for the tests).

    s3_reader.py --endpoint URL --bucket B [--prefix P] --key KEYFILE read
    s3_reader.py --endpoint URL --bucket B mkbucket

Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (moto takes any).
`read` prints one JSON object: {"objects": {key: {"device_id", "seq",
"batch_id", "n_samples", "sha256"}}, "problems": [...]}; exit 1 when a
problem was found."""
import argparse, base64, datetime, hashlib, json, sys

import boto3
import cbor2
import zstandard
from botocore.config import Config
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def client(endpoint):
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))


def expected_key(prefix, h):
    d = datetime.datetime.fromtimestamp(int(h["t_start"] // 1), datetime.timezone.utc)
    name = f'{h["site_id"]}/{h["node_id"]}/{h["device_id"]}/{d:%Y/%m/%d}/{h["seq"]:012d}-{h["batch_id"]}.nebatch'
    return f"{prefix}/{name}" if prefix else name


def read(args):
    k = base64.b64decode(open(args.key).read().strip())
    key_id = hashlib.sha256(k).digest()[:8].hex()
    aes = AESGCM(k)
    s3 = client(args.endpoint)
    objects, problems = {}, []
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=args.bucket, Prefix=(args.prefix + "/") if args.prefix else "")
    for page in pages:
        for o in page.get("Contents", []):
            key = o["Key"]
            got = s3.get_object(Bucket=args.bucket, Key=key)
            body = got["Body"].read()
            env = cbor2.loads(body)
            h = json.loads(env["header"])
            if h["key_id"] != key_id:
                problems.append(f"{key}: key_id {h['key_id']} is not ours")
                continue
            plain = aes.decrypt(env["nonce"], env["ciphertext"], env["header"])
            if h["compression"] == "zstd":
                plain = zstandard.ZstdDecompressor().decompressobj().decompress(plain)
            payload = cbor2.loads(plain)
            n = len(payload["timestamps"]) // 8
            if n != h["n_samples"]:
                problems.append(f"{key}: {n} timestamps, header says {h['n_samples']}")
            if key != expected_key(args.prefix, h):
                problems.append(f"{key}: expected key {expected_key(args.prefix, h)}")
            if got.get("ContentType") != "application/cbor":
                problems.append(f"{key}: content type {got.get('ContentType')}")
            meta = got.get("Metadata", {})
            want = {"neuroedge-seq": str(h["seq"]), "neuroedge-first-sample": str(h["first_sample"]),
                    "neuroedge-n-samples": str(h["n_samples"]), "neuroedge-key-id": h["key_id"]}
            for mk, mv in want.items():
                if meta.get(mk) != mv:
                    problems.append(f"{key}: metadata {mk}={meta.get(mk)!r}, header says {mv!r}")
            for mk, hk in (("neuroedge-t-start", "t_start"), ("neuroedge-t-end", "t_end")):
                try:
                    if abs(float(meta.get(mk, "nan")) - h[hk]) > 1e-5:
                        problems.append(f"{key}: metadata {mk} {meta.get(mk)} vs {h[hk]}")
                except ValueError:
                    problems.append(f"{key}: metadata {mk} {meta.get(mk)!r}")
            objects[key] = {"device_id": h["device_id"], "seq": h["seq"], "batch_id": h["batch_id"],
                            "n_samples": h["n_samples"], "sha256": hashlib.sha256(body).hexdigest()}
    print(json.dumps({"objects": objects, "problems": problems}))
    return 1 if problems else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--prefix", default="neuroedge")
    ap.add_argument("--key")
    ap.add_argument("command", choices=["read", "mkbucket"])
    args = ap.parse_args()
    if args.command == "mkbucket":
        client(args.endpoint).create_bucket(Bucket=args.bucket)
        return 0
    return read(args)


if __name__ == "__main__":
    sys.exit(main())
