#!/usr/bin/python3
"""TLS client for attitude's end-to-end tests (smtplib and ssl, trusting the test's own CA).

  tls_client.py starttls HOST PORT CAFILE FROM TO[,TO...] FILE   EHLO, STARTTLS, EHLO, sendmail
  tls_client.py ssl      HOST PORT CAFILE FROM TO[,TO...] FILE   implicit TLS (SMTP_SSL), sendmail
  tls_client.py cert     HOST PORT CAFILE - - -                  STARTTLS, print the certificate's CN
  tls_client.py hold     HOST PORT CAFILE FROM TO FILE           STARTTLS, print the CN, wait for a
                                                                 line on stdin, then sendmail

The certificate is verified against CAFILE for the name attitude.test. Prints what happened
(`tls VERSION CIPHER`, `cn NAME`, `auth before: ...`, `auth after: ...`, `250 accepted`) and
exits 0 on success. With LOGIN=user:password in the environment it authenticates (AUTH PLAIN,
inside TLS) before sending.
"""

import os
import smtplib
import ssl
import sys


def context(cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def common_name(sock):
    cert = sock.getpeercert()
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return "?"


def main():
    mode, host, port, cafile, sender, rcpts, path = sys.argv[1:8]
    ctx = context(cafile)
    if mode == "ssl":
        s = smtplib.SMTP_SSL(host, int(port), timeout=30, context=ctx)
        s._host = "attitude.test"
    else:
        s = smtplib.SMTP(host, int(port), timeout=30)
        s._host = "attitude.test"
    with s:
        s.ehlo("smtplib.test")
        print("auth before:", s.esmtp_features.get("auth", "-"))
        if mode != "ssl":
            if not s.has_extn("starttls"):
                print("no STARTTLS advertised")
                return 1
            code, text = s.starttls(context=ctx)
            print(code, text.decode(errors="replace"))
            s.ehlo("smtplib.test")
            if s.has_extn("starttls"):
                print("STARTTLS still advertised after the upgrade")
                return 1
        print("auth after:", s.esmtp_features.get("auth", "-"))
        print("tls", s.sock.version(), s.sock.cipher()[0])
        print("cn", common_name(s.sock))
        sys.stdout.flush()
        if mode == "cert":
            s.quit()
            return 0
        if mode == "hold":
            sys.stdin.readline()
        login = os.environ.get("LOGIN")
        if login:
            user, password = login.split(":", 1)
            s.login(user, password)
            print("authenticated as", user)
        with open(path, "rb") as f:
            data = f.read()
        refused = s.sendmail(sender, rcpts.split(","), data)
        print(f"250 accepted, refused={refused}")
        s.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
