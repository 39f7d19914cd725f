"""One SMTP mail transaction with PIPELINING (RFC 2920), on a connection smtplib opened (EHLO, STARTTLS, AUTH).

Step by step, smtplib costs a write and a read for each of MAIL, RCPT and DATA before the data goes out. A server
that lists PIPELINING in its EHLO answer takes the three in one write; DATA ends the group (RFC 2920 §3.1: the
client waits for its 354 before the data), so a message costs two round trips instead of four. The replies come
back in the commands' order and are matched to them one by one, so each step is classified as it would be step by
step: the first refused command's reply is the message's outcome, never the 503/554 that DATA then gets for having
no valid recipient.
"""

from __future__ import annotations

import contextlib
import re
import smtplib

# A plain ASCII address is written in the envelope as it is; anything else goes through smtplib's quoteaddr (an
# email.utils parse), as smtplib.mail/rcpt would.
PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")

# RFC 5321 §4.5.2: a line of the data that starts with a period gets one more (smtplib's _quote_periods).
LINE_STARTING_WITH_A_PERIOD = re.compile(rb"(?m)^\.")


def offers_pipelining(smtp: smtplib.SMTP) -> bool:
    return bool(smtp.does_esmtp and smtp.has_extn("pipelining"))


def _quoted(address: str) -> str:
    return f"<{address}>" if PLAIN_ADDRESS.fullmatch(address) else smtplib.quoteaddr(address)


def envelope_group(sender: str, recipient: str, options: list[str]) -> bytes:
    """MAIL FROM, RCPT TO and DATA as one write. Like smtplib's putcmd, a line break inside a command is refused
    (it would smuggle a command in); like smtplib without SMTPUTF8, commands are ASCII (UnicodeEncodeError)."""
    mail_options = "".join(f" {option}" for option in options)
    group = f"MAIL FROM:{_quoted(sender)}{mail_options}\r\nRCPT TO:{_quoted(recipient)}\r\nDATA\r\n"
    if group.count("\n") != 3 or group.count("\r") != 3:
        raise ValueError("an SMTP command would contain a line break")
    return group.encode("ascii")


def dot_stuffed(data: bytes) -> bytes:
    """The data as it goes on the wire after DATA's 354: period-leading lines doubled, CRLF at the end, then the
    end-of-data line. delivery.mime's bytes already have CRLF line ends (smtplib fixes line ends of str only)."""
    # Most messages have no line starting with a period: two substring tests cost far less than the regex scan.
    quoted = LINE_STARTING_WITH_A_PERIOD.sub(b"..", data) if data.startswith(b".") or b"\n." in data else data
    if not quoted.endswith(b"\r\n"):
        quoted += b"\r\n"
    return quoted + b".\r\n"


class PipelinedTransaction:
    """MAIL, RCPT, DATA in one write, then the data. `stage` is the step whose reply is awaited (MAIL, RCPT, DATA),
    also when an OSError escapes `run` (the connection broke or went silent), so the caller can tell a message cut
    off before its data went out from one whose data may have reached the server."""

    def __init__(self, smtp: smtplib.SMTP) -> None:
        self.smtp = smtp
        self.stage = "MAIL"

    def run(self, sender: str, recipient: str, options: list[str], data: bytes) -> tuple[int, bytes, bool]:
        """(code, reply, answered) as the step-by-step path has them: the reply that decides the message — the
        first refused command's (answered False, the transaction left for the caller to RSET), a 421 (the server
        is closing: nothing more is read), or the data's final reply (answered True)."""
        smtp = self.smtp
        group = envelope_group(sender, recipient, options)
        self.stage = "MAIL"
        smtp.send(group)
        code, reply = smtp.getreply()
        if code != 250:
            if code != 421:
                self._drain(replies_left=2)
            return code, reply, False
        self.stage = "RCPT"
        code, reply = smtp.getreply()
        if code not in (250, 251):
            if code != 421:
                self._drain(replies_left=1)
            return code, reply, False
        self.stage = "DATA"
        code, reply = smtp.getreply()
        if code != 354:  # the DATA command refused (or 421): the content never went out
            return code, reply, False
        smtp.send(dot_stuffed(data))
        code, reply = smtp.getreply()
        return code, reply, True

    def _drain(self, *, replies_left: int) -> None:
        """After a refused MAIL or RCPT, read the replies still owed to the group so the next transaction's replies
        stay matched to it. A server that took DATA anyway (354 with no valid recipient) gets an empty data
        ending it. A break here breaks the connection for the next message (which reconnects), not this outcome."""
        with contextlib.suppress(OSError):
            code = 0
            for _ in range(replies_left):
                code, _reply = self.smtp.getreply()
            if code == 354:
                self.smtp.send(b".\r\n")
                self.smtp.getreply()
