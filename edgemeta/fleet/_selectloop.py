"""Many paho clients on one ``selectors`` loop, through paho's external-loop API.

paho's own ``loop_start()`` costs a thread and a socket pair per client; for thousands of
connections in one process (:mod:`edgemeta.fleet.simulate`) the clients are instead registered
here: paho tells us about its socket through the ``on_socket_*`` callbacks, and one ``select()``
call serves every client with ``loop_read()``, ``loop_write()`` and ``loop_misc()``.
Single-threaded: every method must be called from the thread that runs the loop.
"""

from __future__ import annotations

import selectors
import socket
from typing import Any

import paho.mqtt.client as mqtt

from edgemeta.fleet._guard import guarded

__all__ = ["SelectLoop"]

_RW = selectors.EVENT_READ | selectors.EVENT_WRITE


class SelectLoop:
    """One selector for many paho clients.

    Args:
        misc_period_s: How often each client's ``loop_misc()`` (keepalive PINGREQ, ping
            timeout) runs; must be well under the clients' keepalive.
    """

    def __init__(self, misc_period_s: float = 1.0) -> None:
        self._sel = selectors.DefaultSelector()
        self._clients: list[mqtt.Client] = []
        self._pending: set[mqtt.Client] = set()  # have queued packets, not yet written
        self._armed: set[mqtt.Client] = set()  # registered for EVENT_WRITE (send buffer full)
        self._misc_period_s = float(misc_period_s)
        self._misc_cursor = 0
        self._misc_at: float | None = None

    def attach(self, client: mqtt.Client) -> None:
        """Take over ``client``'s socket events; call before its first ``connect()``."""
        # Guarded: paho re-raises callback exceptions, which would end the whole simulation.
        client.on_socket_open = guarded(self._on_socket_open, "select loop on_socket_open")
        client.on_socket_close = guarded(self._on_socket_close, "select loop on_socket_close")
        client.on_socket_register_write = guarded(self._on_register_write,
                                                  "select loop on_socket_register_write")
        client.on_socket_unregister_write = guarded(self._on_unregister_write,
                                                    "select loop on_socket_unregister_write")
        self._clients.append(client)

    @property
    def open_sockets(self) -> int:
        """Sockets currently registered (connected or connecting clients)."""
        return len(self._sel.get_map())

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for socket events, handle them, write what is queued."""
        for key, mask in self._sel.select(timeout):
            client: mqtt.Client = key.data
            if mask & selectors.EVENT_READ:
                client.loop_read()
            if mask & selectors.EVENT_WRITE and client.socket() is not None:
                client.loop_write()
        self.flush()

    def flush(self) -> None:
        """Write every client's queued packets now.

        Writing right after ``publish()`` instead of waiting for EVENT_WRITE saves two
        ``epoll_ctl`` calls per message; only a socket whose send buffer is full gets armed.
        """
        while self._pending:
            pending, self._pending = self._pending, set()
            for client in pending:
                if client.socket() is None:
                    continue
                client.loop_write()
                sock = client.socket()
                if client.want_write() and sock is not None and client not in self._armed:
                    self._armed.add(client)
                    self._sel.modify(sock, _RW, client)

    def misc(self, now: float) -> None:
        """Run ``loop_misc()`` for a slice of the clients, so each gets it once per period.

        The slice is proportional to the time since the last call: no O(N) pass per tick.
        """
        n = len(self._clients)
        if n == 0:
            return
        if self._misc_at is None:
            self._misc_at = now
        count = min(n, int((now - self._misc_at) * n / self._misc_period_s))
        if count == 0:
            return
        self._misc_at = now
        for _ in range(count):
            client = self._clients[self._misc_cursor]
            self._misc_cursor = (self._misc_cursor + 1) % n
            if client.socket() is not None:
                client.loop_misc()

    @staticmethod
    def drop(client: mqtt.Client) -> bool:
        """Close ``client``'s connection without an MQTT DISCONNECT; True if it had one.

        The broker then publishes the client's Last Will, as after a power cut.
        """
        sock = client.socket()
        if sock is None:
            return False
        if not isinstance(sock, socket.socket):  # paho's websocket wrapper: ws:// is refused
            raise TypeError(f"cannot drop a connection over {type(sock).__name__}: expected a "
                            "TCP or TLS socket (mqtt:// or mqtts://)")
        try:
            # paho has no public abort: shut the socket down and let paho read the EOF, so it
            # closes the socket and runs its own cleanup (on_socket_close, on_disconnect).
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        client.loop_read()
        return True

    def close(self) -> None:
        """Drop whatever is still connected and release the selector. Idempotent."""
        for client in self._clients:
            self.drop(client)
        self._sel.close()

    # --- paho socket callbacks ------------------------------------------------------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._armed.discard(client)
        self._sel.register(sock, selectors.EVENT_READ, client)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError):
            pass  # never registered (connect failed) or already gone
        self._pending.discard(client)
        self._armed.discard(client)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._pending.add(client)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if client in self._armed:
            self._armed.discard(client)
            try:
                self._sel.modify(sock, selectors.EVENT_READ, client)
            except (KeyError, ValueError):
                pass
