#!/usr/bin/env python3
"""A relay in front of sytest's mail sink, for tests/sytest/adapter.sh.

sytest's mail server (lib/SyTest/MailServer) knows HELO but not EHLO, and answers EHLO
with a 500. Hearth's SMTP client (lettre) greets with EHLO only, as RFC 5321 asks of a
client; Synapse's falls back to HELO. This relay passes every byte through, except that
a client line starting with EHLO is sent on as HELO. It exits when its parent (the
adapter, which became Hearth's process) is gone.

    smtp-helo.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT
"""
import asyncio
import os
import sys


async def pipe(reader, writer, rewrite):
    try:
        while line := await reader.readline():
            if rewrite and line[:5].upper() == b"EHLO ":
                line = b"HELO " + line[5:]
            writer.write(line)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main():
    listen, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    parent = os.getppid()

    async def serve(client_r, client_w):
        up_r, up_w = await asyncio.open_connection(host, port)
        await asyncio.gather(pipe(client_r, up_w, True), pipe(up_r, client_w, False))

    server = await asyncio.start_server(serve, "127.0.0.1", listen)
    async with server:
        while os.getppid() == parent:
            await asyncio.sleep(1)


asyncio.run(main())
