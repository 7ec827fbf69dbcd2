#!/usr/bin/python3
"""A bounded SMTP load over STARTTLS (smtp-source has no TLS): SESSIONS sessions in parallel, each
EHLO, STARTTLS, EHLO again, then its share of MESSAGES messages of SIZE octets (MAIL, RCPT, DATA,
one command at a time), QUIT. Loopback only; stops at --timeout whatever it reached.

    tls_load.py HOST PORT SESSIONS MESSAGES SIZE [--timeout S] [--label TEXT]

Prints one line: RESULT label=... sessions= messages= ok= errors= elapsed_s= msgs_per_s=
"""

import argparse
import asyncio
import ipaddress
import ssl
import sys
import time


async def reply(reader):
    """Reads one (possibly multi-line) reply; its code."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return int(line[:3])


async def command(reader, writer, line, want):
    writer.write(line)
    await writer.drain()
    code = await reply(reader)
    if code // 100 != want:
        raise ConnectionError(f"{line[:20]!r}: {code}")


async def session(host, port, messages, body, ctx, counts):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if await reply(reader) != 220:
            raise ConnectionError("greeting")
        await command(reader, writer, b"EHLO tls-load.example\r\n", 2)
        await command(reader, writer, b"STARTTLS\r\n", 2)
        await writer.start_tls(ctx, server_hostname="localhost")
        await command(reader, writer, b"EHLO tls-load.example\r\n", 2)
        for i in range(messages):
            await command(reader, writer, b"MAIL FROM:<foo@example.com>\r\n", 2)
            await command(reader, writer, b"RCPT TO:<bar@example.com>\r\n", 2)
            await command(reader, writer, b"DATA\r\n", 3)
            await command(reader, writer, body, 2)
            counts["ok"] += 1
        writer.write(b"QUIT\r\n")
        await writer.drain()
    except (ConnectionError, OSError, ssl.SSLError):
        counts["errors"] += 1
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("sessions", type=int)
    ap.add_argument("messages", type=int)
    ap.add_argument("size", type=int)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--label", default="tls")
    a = ap.parse_args()
    if not ipaddress.ip_address(a.host).is_loopback:
        sys.exit("tls_load: loopback addresses only")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the benchmark's throwaway certificate
    line = b"X" * 78 + b"\r\n"
    body = (b"Subject: tls load\r\n\r\n" + line * max(1, a.size // 80) + b".\r\n")
    counts = {"ok": 0, "errors": 0}
    per, extra = divmod(a.messages, a.sessions)
    started = time.monotonic()
    tasks = [
        asyncio.create_task(session(a.host, a.port, per + (i < extra), body, ctx, counts))
        for i in range(a.sessions)
    ]
    done, pending = await asyncio.wait(tasks, timeout=a.timeout)
    for t in pending:
        t.cancel()
    elapsed = time.monotonic() - started
    print(
        f"RESULT label={a.label} target={a.host}:{a.port} mode=starttls-reuse "
        f"sessions={a.sessions} messages={a.messages} size={a.size} ok={counts['ok']} "
        f"errors={counts['errors'] + len(pending)} elapsed_s={elapsed:.3f} "
        f"msgs_per_s={counts['ok'] / elapsed:.1f}"
    )


asyncio.run(main())
