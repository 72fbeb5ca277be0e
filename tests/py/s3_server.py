"""An S3-compatible server for weir's tests (moto's), and a reader independent of weir.

  s3_server.py serve BUCKET      starts moto's server on 127.0.0.1 (a free port), creates
                                 BUCKET, prints the port, serves until killed
  s3_server.py download PORT BUCKET PREFIX DIR
                                 copies every object under PREFIX into DIR (boto3)
  s3_server.py list PORT BUCKET PREFIX
                                 prints the keys under PREFIX, one per line
"""
import os
import sys
import time

import boto3


def client(port):
    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )


def keys(s3, bucket, prefix):
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"]


def main():
    cmd = sys.argv[1]
    if cmd == "serve":
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        port = server._server.server_port
        client(port).create_bucket(Bucket=sys.argv[2])
        print(port, flush=True)
        while True:
            time.sleep(3600)
    elif cmd == "download":
        port, bucket, prefix, out = sys.argv[2:6]
        s3 = client(port)
        for key in keys(s3, bucket, prefix):
            path = os.path.join(out, key[len(prefix):].lstrip("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            s3.download_file(bucket, key, path)
    elif cmd == "list":
        port, bucket, prefix = sys.argv[2:5]
        for key in keys(client(port), bucket, prefix):
            print(key)


if __name__ == "__main__":
    main()
