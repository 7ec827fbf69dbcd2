#!/usr/bin/python3
"""smtplib client that sends one envelope with parameters, for attitude's transparency tests.

  envelope.py HOST PORT SPEC_JSON

SPEC_JSON: {"from": ADDR, "mail_options": [...], "rcpts": [[ADDR, [OPTION, ...]], ...],
            "file": PATH, "chunks": null | [SIZE, ...], "auth": null | [USER, PASSWORD],
            "ehlo": NAME}
With "chunks", the message goes in BDAT chunks of those sizes (the rest in the last one, sent
with LAST); otherwise with DATA. Prints one line per reply (`CODE TEXT`) and exits 0 when the
message was accepted (250).
"""

import json
import smtplib
import sys


def main():
    host, port, spec = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    with open(spec["file"], "rb") as f:
        data = f.read()
    with smtplib.SMTP(host, port, timeout=90) as s:
        s.ehlo(spec.get("ehlo", "envelope.test"))
        print("EHLO", " ".join(sorted(s.esmtp_features)))
        if spec.get("auth"):
            s.login(*spec["auth"])
        code, text = s.mail(spec["from"], spec.get("mail_options", []))
        print(code, text.decode(errors="replace"))
        if code != 250:
            return 1
        for rcpt, options in spec["rcpts"]:
            code, text = s.rcpt(rcpt, options)
            print(code, text.decode(errors="replace"))
            if code not in (250, 251):
                return 1
        chunks = spec.get("chunks")
        if chunks is None:
            code, text = s.data(data)
        else:
            at = 0
            for size in chunks:
                s.putcmd("BDAT", str(size))
                s.send(data[at : at + size])
                at += size
                code, text = s.getreply()
                print(code, text.decode(errors="replace"))
                if code != 250:
                    return 1
            rest = data[at:]
            s.putcmd("BDAT", f"{len(rest)} LAST")
            s.send(rest)
            code, text = s.getreply()
        print(code, text.decode(errors="replace"))
        s.quit()
        return 0 if code == 250 else 1


if __name__ == "__main__":
    sys.exit(main())
