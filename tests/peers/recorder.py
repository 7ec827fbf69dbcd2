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

With --proxy it expects a PROXY protocol header first (aiosmtpd's own support), and stores the
source address the header gave in NNNNNN.proxy (`ADDR PORT`, or `LOCAL` for a LOCAL header).
--listen HOST:PORT picks the address (default: 127.0.0.1, a free port; `[::1]:0` for IPv6).

With --auth USER:PASSWORD (repeatable) it offers AUTH PLAIN and LOGIN (without TLS: the tests
run on loopback), checks the credentials, and stores the login of an authenticated session in
NNNNNN.auth next to the message.

With --tls-cert FILE --tls-key FILE it offers STARTTLS, and stores the TLS version and cipher
of a session that used it in NNNNNN.tls.

While it offers AUTH it takes MAIL's AUTH= parameter (RFC 4954 section 5, which aiosmtpd alone
refuses with 555) and stores its value in NNNNNN.mailauth.
"""

import argparse
import asyncio
import os
import re
import ssl

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Recorder:
    def __init__(self, directory):
        self.directory = directory
        # After a restart into the same directory, go on numbering after what is there.
        numbers = [int(n.split(".")[0]) for n in os.listdir(directory) if n[:6].isdigit()]
        self.count = max(numbers, default=0)

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
        proxy = getattr(session, "proxy_data", None)
        if proxy is not None:
            with open(base + ".proxy", "w", encoding="utf-8") as f:
                if proxy.src_addr is None:
                    f.write("LOCAL\n")
                else:
                    f.write(f"{proxy.src_addr} {proxy.src_port}\n")
        tls = server.transport.get_extra_info("ssl_object") if server.transport else None
        if tls is not None:
            with open(base + ".tls", "w", encoding="utf-8") as f:
                f.write(f"{tls.version()} {tls.cipher()[0]}\n")
        mail_auth = getattr(session, "mail_auth", None)
        if mail_auth is not None:
            with open(base + ".mailauth", "w", encoding="utf-8") as f:
                f.write(mail_auth)
        login = getattr(session, "auth_data", None)
        if session.authenticated and login:
            with open(base + ".auth", "wb") as f:
                f.write(login if isinstance(login, bytes) else str(login).encode())
        os.rename(tmp, base + ".env")
        return f"250 2.0.0 Stored as {self.count}"

    async def handle_PROXY(self, server, session, envelope, proxy_data):
        return proxy_data.valid


class AuthParamSMTP(SMTP):
    """aiosmtpd's SMTP, taking MAIL's AUTH= parameter as RFC 4954 section 5 asks of a server
    that offers AUTH."""

    async def smtp_MAIL(self, arg):
        words = (arg or "").split(" ")
        kept = [w for w in words if not w.upper().startswith("AUTH=")]
        given = [w.split("=", 1)[1] for w in words if w.upper().startswith("AUTH=")]
        self.session.mail_auth = given[0] if given else None
        return await super().smtp_MAIL(" ".join(kept))


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
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--proxy", action="store_true")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    accounts = dict(a.split(":", 1) for a in args.auth)
    options = {}
    if accounts:
        options.update(authenticator=authenticator(accounts), auth_require_tls=False)
    if args.proxy:
        options["proxy_protocol_timeout"] = 5
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        options["tls_context"] = context
    host, port = args.listen.rsplit(":", 1)
    host = host.strip("[]")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    handler = Recorder(args.dir)
    server = loop.run_until_complete(
        loop.create_server(
            lambda: (AuthParamSMTP if accounts else SMTP)(
                handler, hostname="recorder.test", enable_SMTPUTF8=True, **options
            ),
            host=host,
            port=int(port),
            reuse_address=True,
        )
    )
    port = server.sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"listening smtp={shown}:{port}", flush=True)
    loop.run_forever()


if __name__ == "__main__":
    main()
