"""Test helpers around Azurite, with the Azure SDK as the independent client.

    blob_helper.py sas PORT BLOB          print a read/write/create/delete SAS URL for disks/BLOB
    blob_helper.py get URL OUT            download the blob to OUT; print the page ranges' bytes,
                                    their count and the end of the last one
    blob_helper.py proxy PORT TARGET DIR  forward http to 127.0.0.1:TARGET; every tenth request
                                    answers 503 when DIR/fail-every-10 exists; page writes
                                    hang after DIR/stall-after (a number) of them; DIR/count
                                    holds the page writes seen
"""
import datetime
import http.client
import http.server
import os
import sys
import threading
import time

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def sas(port, blob):
    from azure.storage.blob import BlobServiceClient, BlobSasPermissions, generate_blob_sas
    svc = BlobServiceClient(f"http://127.0.0.1:{port}/{ACCOUNT}", credential={"account_name": ACCOUNT, "account_key": KEY})
    try:
        svc.create_container("disks")
    except Exception:
        pass
    token = generate_blob_sas(ACCOUNT, "disks", blob, account_key=KEY,
                              permission=BlobSasPermissions(read=True, write=True, create=True, delete=True),
                              expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2))
    print(f"http://127.0.0.1:{port}/{ACCOUNT}/disks/{blob}?{token}")


def get(url, out):
    from azure.storage.blob import BlobClient
    b = BlobClient.from_blob_url(url)
    with open(out, "wb") as f:
        f.write(b.download_blob().readall())
    r = b.get_page_ranges()
    ranges = r[0] if isinstance(r, tuple) else r
    print(sum(x["end"] - x["start"] + 1 for x in ranges), len(ranges), max((x["end"] + 1 for x in ranges), default=0))


def proxy(port, target, state):
    lock = threading.Lock()
    seen = {"all": 0, "pages": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def forward(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            with lock:
                seen["all"] += 1
                n = seen["all"]
                page = self.command == "PUT" and "comp=page" in self.path and "pagelist" not in self.path
                if page:
                    seen["pages"] += 1
                    with open(os.path.join(state, "count"), "w") as f:
                        f.write(str(seen["pages"]))
                pages = seen["pages"]
            stall = os.path.join(state, "stall-after")
            if page and os.path.exists(stall) and pages > int(open(stall).read()):
                time.sleep(3600)
            if os.path.exists(os.path.join(state, "fail-every-10")) and n % 10 == 0:
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.send_header("x-ms-error-code", "ServerBusy")
                self.end_headers()
                return
            conn = http.client.HTTPConnection("127.0.0.1", target, timeout=300)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            self.send_response(r.status)
            for k, v in r.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            length = r.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_HEAD = do_DELETE = forward

    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    {"sas": lambda a: sas(a[0], a[1]), "get": lambda a: get(a[0], a[1]),
     "proxy": lambda a: proxy(int(a[0]), int(a[1]), a[2])}[sys.argv[1]](sys.argv[2:])
