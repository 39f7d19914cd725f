"""A local HTTP peer for the channel benchmarks: answers every request after a fixed latency, like a provider API.

    python bench/peer_server.py --port 9801 --latency-ms 50

asyncio with HTTP/1.1 keep-alive, so thousands of requests can be in flight at once on one core. It answers 202 with
a JSON id (the notification_service contract) to any path, and counts requests and distinct idempotency keys, which
`GET /stats` returns.
"""

from __future__ import annotations

import argparse
import asyncio
import json

requests = 0
keys: set[str] = set()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float) -> None:
    global requests
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            length = int(headers.get("content-length", "0") or 0)
            if length:
                await reader.readexactly(length)
            if path == "/stats":
                body = json.dumps({"requests": requests, "keys": len(keys)}).encode()
            else:
                requests += 1
                key = headers.get("idempotency-key", "")
                keys.add(key)
                await asyncio.sleep(latency)
                body = json.dumps({"id": f"peer-{requests}"}).encode()
            writer.write(
                b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            await writer.drain()
            if method == "GET" and path == "/stats":
                continue
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(port: int, latency: float) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, latency), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.latency_ms / 1000))
