"""SMTP PIPELINING (RFC 2920) on a connection smtplib opened (EHLO, STARTTLS, AUTH): the wire-level parts.

Step by step, smtplib costs a write and a read for each of MAIL, RCPT and DATA before the data goes out. A server
that lists PIPELINING in its EHLO answer takes the three in one write; DATA ends the group (RFC 2920 §3.1: the
client waits for its 354 before the data). The message content may start a group (§3.1 again), so a message's data
goes out in the same write as the next message's MAIL, RCPT and DATA: one write and one round trip a message. The
replies come back in the commands' order and are matched to them one by one (delivery.channels), so each step is
classified as it would be step by step.

`ReplyReader` reads those replies straight from the socket: smtplib's getreply reads each line through a buffered
file and decodes it for its debug output, a cost paid four times a message.
"""

from __future__ import annotations

import re
import smtplib
import socket

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


class ReplyReader:
    """SMTP replies (RFC 5321 §4.2) read from the connection's socket, as smtplib's getreply parses them: the code
    of the last line, the lines' text joined by newlines. Only what was asked of the server is ever read, so when
    every command written has had its reply, nothing is left buffered here and smtplib's own reading (RSET, QUIT)
    goes on where this stopped."""

    # smtplib's limit for a reply line.
    MAX_LINE = 8192

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, bytes]:
        lines: list[bytes] = []
        while True:
            line = self._line()
            lines.append(line[4:].strip(b" \t\r\n"))
            try:
                code = int(line[:3])
            except ValueError:
                return -1, b"\n".join(lines)
            if line[3:4] != b"-":
                return code, b"\n".join(lines)

    def _line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line, self.buffer = self.buffer[: end + 1], self.buffer[end + 1 :]
                return line
            if len(self.buffer) > self.MAX_LINE:
                raise smtplib.SMTPServerDisconnected("reply line too long")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
            self.buffer += chunk

    def replies(self, count: int) -> None:
        """Read and forget `count` replies (those owed to a group after one of its commands was refused)."""
        for _ in range(count):
            self.reply()
