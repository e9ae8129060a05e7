"""An SMTP server on 127.0.0.1 (aiosmtpd) that appends every message it takes to a file as one
JSON line {from, to, subject, body}. Usage: smtp_sink.py PORT FILE [SECONDS]. It stops after
SECONDS (default 600) so a test that dies leaves nothing running for long."""

import email
import email.policy
import json
import sys
import time

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, path):
        self.path = path

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = msg.get_body(preferencelist=("plain",))
        line = {
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "subject": str(msg["subject"]),
            "body": body.get_content() if body is not None else "",
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
        return "250 Message accepted for delivery"


def main():
    port, path = int(sys.argv[1]), sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 600
    controller = Controller(Sink(path), hostname="127.0.0.1", port=port)
    controller.start()
    print("listening", flush=True)
    try:
        time.sleep(seconds)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
