#!/usr/bin/python3
"""Parses one trace header with Python's email package (policy.default) and prints it unfolded:

  received.py 'Received: from ...'

Exits 1 when the package does not read it as one Received header with a date.
"""

import email
import email.policy
import email.utils
import sys


def main():
    message = email.message_from_string(sys.argv[1] + "\r\n", policy=email.policy.default)
    values = message.get_all("Received") or []
    if len(values) != 1 or message.defects:
        print("not one Received header:", values, message.defects)
        return 1
    value = " ".join(str(values[0]).split())
    _, _, date = value.rpartition(";")
    if email.utils.parsedate_to_datetime(date.strip()) is None:
        print("no date:", value)
        return 1
    print(value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
