"""A test SMTP server's handler, wrapped so the server's EHLO answer also lists PIPELINING (RFC 2920).

aiosmtpd reads the commands from its stream in order, so it serves pipelined commands as they come, but it does not
advertise the extension; this wrapper does, leaving every other hook (and the handler's own EHLO hook) as it was."""

from __future__ import annotations

from typing import Any


class AdvertisesPipelining:
    def __init__(self, handler: object) -> None:
        self._handler = handler
        # aiosmtpd finds a handler's hooks with dir(), so the wrapped handler's own (handle_MAIL, handle_DATA, ...)
        # are copied onto this one.
        for name in dir(handler):
            if name.startswith("handle_") and name != "handle_EHLO":
                setattr(self, name, getattr(handler, name))

    def __getattr__(self, name: str) -> Any:  # anything else the server asks the handler for
        return getattr(self._handler, name)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        own = getattr(self._handler, "handle_EHLO", None)
        if own is None:
            session.host_name = hostname  # what aiosmtpd does itself when a handler has no EHLO hook
        else:
            responses = await own(server, session, envelope, hostname, responses)
        return [*responses[:-1], "250-PIPELINING", responses[-1]]
