#!/usr/bin/python3
"""smtplib client for attitude's end-to-end tests.

  client.py send HOST PORT FROM TO[,TO...] FILE      sendmail() of FILE's bytes
  client.py pipelined HOST PORT FROM TO[,TO...] FILE  MAIL, RCPTs and DATA in one write
                                                      (RFC 2920), then the message

Prints one line per reply as `CODE TEXT` and exits 0 when the message was accepted (250).
"""

import smtplib
import sys


def send(host, port, sender, rcpts, data):
    with smtplib.SMTP(host, port, timeout=30) as s:
        s.ehlo("smtplib.test")
        refused = s.sendmail(sender, rcpts, data)
        print(f"250 accepted, refused={refused}")
        s.quit()
    return 0


def pipelined(host, port, sender, rcpts, data):
    with smtplib.SMTP(host, port, timeout=30) as s:
        code, _ = s.ehlo("smtplib.test")
        if not s.has_extn("pipelining"):
            print("no PIPELINING advertised")
            return 1
        group = f"MAIL FROM:<{sender}>\r\n"
        group += "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts)
        group += "DATA\r\n"
        s.send(group.encode())
        codes = []
        for _ in range(len(rcpts) + 2):
            code, text = s.getreply()
            codes.append(code)
            print(code, text.decode(errors="replace"))
        if codes[-1] != 354:
            return 1
        # smtplib's own quoting: CRLF line endings and dot-stuffing.
        quoted = smtplib.quotedata(data.decode("utf-8", "surrogateescape")).encode(
            "utf-8", "surrogateescape"
        )
        if not quoted.endswith(b"\r\n"):
            quoted += b"\r\n"
        s.send(quoted + b".\r\n")
        code, text = s.getreply()
        print(code, text.decode(errors="replace"))
        s.quit()
        return 0 if code == 250 else 1


def main():
    mode, host, port, sender, rcpts, path = sys.argv[1:7]
    with open(path, "rb") as f:
        data = f.read()
    rcpts = rcpts.split(",")
    if mode == "send":
        return send(host, int(port), sender, rcpts, data)
    return pipelined(host, int(port), sender, rcpts, data)


if __name__ == "__main__":
    sys.exit(main())
