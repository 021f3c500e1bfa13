"""A minimal real OTLP/HTTP trace receiver for the tests, built on ``opentelemetry-proto``.

Run as ``python tests/otlp_receiver.py --fd N --out FILE``: it serves ``POST /v1/traces``
(``application/x-protobuf``, the OTLP/HTTP exporter's default) on the inherited listening
socket, decodes each ``ExportTraceServiceRequest`` and appends one JSON line per span to FILE
(name, ids, parent, attributes, events, status). It stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind) if kind else None


def spans_of(request: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    out = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: value_of(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    {
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "attributes": {kv.key: value_of(kv.value) for kv in span.attributes},
                        "events": [
                            {
                                "name": e.name,
                                "attributes": {kv.key: value_of(kv.value) for kv in e.attributes},
                            }
                            for e in span.events
                        ],
                        "status": span.status.code,
                        "status_message": span.status.message,
                        "resource": resource,
                    }
                )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            with lock, args.out.open("a") as out:
                for span in spans_of(request):
                    out.write(json.dumps(span) + "\n")
            payload = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *log_args: Any) -> None:
            return  # quiet: the test reads the spans file, not access logs

    server = HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=args.fd)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    args.out.touch()
    server.serve_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()
