#!/usr/bin/python3
"""A recording SMTP backend for attitude's end-to-end tests (aiosmtpd, Debian python3-aiosmtpd).

Listens on a loopback port it picks itself and prints `listening smtp=127.0.0.1:PORT`.
Every accepted message is stored in --dir as NNNNNN.eml (the content exactly as received,
after dot-unstuffing) and NNNNNN.env (MAIL FROM on the first line, then one RCPT per line;
written last, so a .env always has its .eml).

Faults on demand, so tests can check that attitude hands back the backend's own verdict:
  RCPT to a local part starting with  tempfail  -> 451 4.3.0
  RCPT to a local part starting with  reject    -> 550 5.1.1
  a message with a header  X-Fault: data451      -> 451 4.3.0 at end of data (not stored)
  a message with a header  X-Fault: data550      -> 550 5.7.1 at end of data (not stored)

With --auth USER:PASSWORD (repeatable) it offers AUTH PLAIN and LOGIN (without TLS: the tests
run on loopback), checks the credentials, and stores the login of an authenticated session in
NNNNNN.auth next to the message.
"""

import argparse
import asyncio
import os
import re

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Recorder:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("tempfail"):
            return "451 4.3.0 Temporary failure (recorder)"
        if local.startswith("reject"):
            return "550 5.1.1 No such user (recorder)"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content or b""
        head = content.split(b"\r\n\r\n", 1)[0]
        fault = re.search(rb"(?im)^X-Fault:\s*(\S+)", head)
        if fault and fault.group(1) == b"data451":
            return "451 4.3.0 Message deferred (recorder)"
        if fault and fault.group(1) == b"data550":
            return "550 5.7.1 Message refused (recorder)"
        self.count += 1
        base = os.path.join(self.directory, f"{self.count:06d}")
        with open(base + ".eml", "wb") as f:
            f.write(content)
        tmp = base + ".env.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write((envelope.mail_from or "") + "\n")
            for rcpt in envelope.rcpt_tos:
                f.write(rcpt + "\n")
        login = getattr(session, "auth_data", None)
        if session.authenticated and login:
            with open(base + ".auth", "wb") as f:
                f.write(login if isinstance(login, bytes) else str(login).encode())
        os.rename(tmp, base + ".env")
        return f"250 2.0.0 Stored as {self.count}"


def authenticator(accounts):
    def check(server, session, envelope, mechanism, auth_data):
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode("utf-8", "replace")
            if accounts.get(user) == auth_data.password.decode("utf-8", "replace"):
                return AuthResult(success=True, auth_data=auth_data.login)
        return AuthResult(success=False, handled=False)

    return check


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--auth", action="append", default=[])
    args = parser.parse_args()
    accounts = dict(a.split(":", 1) for a in args.auth)
    auth = {}
    if accounts:
        auth = dict(authenticator=authenticator(accounts), auth_require_tls=False)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    handler = Recorder(args.dir)
    server = loop.run_until_complete(
        loop.create_server(
            lambda: SMTP(handler, hostname="recorder.test", enable_SMTPUTF8=True, **auth),
            host="127.0.0.1",
            port=0,
        )
    )
    port = server.sockets[0].getsockname()[1]
    print(f"listening smtp=127.0.0.1:{port}", flush=True)
    loop.run_forever()


if __name__ == "__main__":
    main()
