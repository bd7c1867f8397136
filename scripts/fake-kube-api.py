#!/usr/bin/env python3
"""A stand-in for the Kubernetes API server in the Docker rehearsal: over HTTPS, it
answers GET /apis/apps/v1/namespaces/NS/statefulsets/NAME to the bearer of one
service-account token, with the replica count read from a file at each request (the
rehearsal "scales" by writing it). Everything else is 404; a wrong token 401. Each
request is logged to standard output: who asked (the address) and what was answered.

  fake-kube-api.py --listen HOST:PORT --cert C --key K --token-file T \\
      --namespace NS --statefulset NAME --replicas-file F
"""
import argparse
import http.server
import json
import ssl
import sys


def main():
    p = argparse.ArgumentParser()
    for flag in ("listen", "cert", "key", "token-file", "namespace", "statefulset", "replicas-file"):
        p.add_argument(f"--{flag}", required=True)
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    with open(a.token_file) as f:
        token = f.read().strip()
    path = f"/apis/apps/v1/namespaces/{a.namespace}/statefulsets/{a.statefulset}"

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.headers.get("Authorization") != f"Bearer {token}":
                self.answer(401, {"kind": "Status", "reason": "Unauthorized", "code": 401})
            elif self.path != path:
                self.answer(404, {"kind": "Status", "reason": "NotFound", "code": 404})
            else:
                with open(a.replicas_file) as f:
                    replicas = int(f.read().strip())
                self.answer(200, {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                  "metadata": {"name": a.statefulset, "namespace": a.namespace},
                                  "spec": {"replicas": replicas}, "status": {"replicas": replicas}})

        def log_message(self, fmt, *args):
            print(f"{self.client_address[0]} {fmt % args}", flush=True)

    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    # The handshake happens in each request's thread, not in accept(): one stalled
    # client cannot hold up the others.
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    print(f"fake Kubernetes API on https://{a.listen}{path}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
