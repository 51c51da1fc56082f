"""The route Service of the lab: what kube-proxy does for `mf-route-<route>`.

A sender that may not send a route's mail hands it to the route's Service,
whose endpoints are the senders that may (DESIGN: the EndpointSlices list the
route's targets). The lab renders every route Service as one host
(`--route-service-host`, port 25), so this proxy cannot tell the routes apart:
it forwards each connection to a sender that is a target of every route in
`routes.json` (never back to the sender that connects), and that sender's own
transport map sends the mail from its own IP.
"""

import asyncio
import json
import os
import random


class RouteProxy:
    def __init__(self, host, port, routes_json, namespace, seed):
        self.host = host
        self.port = port
        self.routes_json = routes_json
        self.namespace = namespace
        self.rng = random.Random(seed)
        self.server = None
        self.forwarded = {}
        self._cache = (None, [])

    def backends(self):
        try:
            mtime = os.stat(self.routes_json).st_mtime_ns
        except OSError:
            return []
        if self._cache[0] == mtime:
            return self._cache[1]
        try:
            with open(self.routes_json) as f:
                table = json.load(f)
        except (OSError, ValueError):
            return self._cache[1]
        sets = [
            {t["ip"] for t in route.get("targets", []) if t.get("state") == "Healthy"}
            for route in table.get("routes", [])
            if route.get("namespace") == self.namespace
        ]
        ips = sorted(set.intersection(*sets)) if sets else []
        self._cache = (mtime, ips)
        return ips

    async def start(self):
        self.server = await asyncio.start_server(self._handle, self.host, self.port)

    async def stop(self):
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def _handle(self, reader, writer):
        peer = writer.get_extra_info("peername")[0]
        choices = [ip for ip in self.backends() if ip != peer]
        if not choices:
            writer.write(b"421 4.3.0 lab route Service: no healthy sender to hand the mail to\r\n")
            await writer.drain()
            writer.close()
            return
        backend = self.rng.choice(choices)
        try:
            up_reader, up_writer = await asyncio.open_connection(backend, 25)
        except OSError:
            writer.write(b"421 4.4.1 lab route Service: sender unreachable\r\n")
            await writer.drain()
            writer.close()
            return
        self.forwarded[(peer, backend)] = self.forwarded.get((peer, backend), 0) + 1
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, OSError):
            pass
