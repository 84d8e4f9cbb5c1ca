"""Talking to systemd: a minimal D-Bus client for the system and user managers.

reaper needs exactly two things from systemd, both on the exec path only where
systemd runs and reaper's own cgroup is not delegated to it:
- a unit's `Delegate` property (is this cgroup ours to write?), for managers
  that do not mark delegated cgroups with an xattr (systemd 252's user
  manager sets neither trusted.delegate nor user.delegate);
- a transient scope with Delegate=yes containing reaper itself
  (StartTransientUnit, then wait for the job's JobRemoved signal), which is
  what `systemd-run --scope -p Delegate=yes` does.

Why D-Bus in-process and not `systemd-run --scope`: systemd-run can only wrap
a command, so reaper would have to re-exec itself under it (a second Python
start-up, ~20-40 ms, plus systemd-run's own), while the call here is one
connection and two round trips.  The wire format comes from jeepney (pure
Python, MIT; ~15 ms to import on the development machine, paid only on this
path).  Its blocking connection is not used: it always says `Hello`, which
systemd's private sockets (/run/systemd/private, $XDG_RUNTIME_DIR/systemd/
private: peer-to-peer, no bus daemon) reject, so the little socket loop is
here, bounded by one deadline for the whole conversation.

Which bus (sd_bus_open_system / sd_bus_open_user, sd-bus(3)):
- system manager: $DBUS_SYSTEM_BUS_ADDRESS, else /run/dbus/system_bus_socket;
  root falls back to /run/systemd/private where no dbus-daemon runs;
- user manager: $DBUS_SESSION_BUS_ADDRESS, else $XDG_RUNTIME_DIR/bus
  (dbus-user-session), else $XDG_RUNTIME_DIR/systemd/private.

Where no systemd runs this module is not even imported (reaper.delegation
looks for /run/systemd/system first, as sd_booted(3) does).  Every failure is a BusError whose message says what was tried.
"""

import os
import select
import socket
import time

from reaper.errors import ReaperError

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
CALL_TIMEOUT_S = 5.0        # a whole conversation; the manager answers in ms (systemd-run allows 25 s)
UNIT_INTERFACES = {"service": "Service", "scope": "Scope", "slice": "Slice", "socket": "Socket",
                   "mount": "Mount", "swap": "Swap"}


class BusError(ReaperError):
    """The manager could not be reached, or refused."""


class UnitExists(BusError):
    """StartTransientUnit: a unit of that name is loaded already."""


def _unix_path(address):
    """The socket path of the first unix:path= (or abstract=) entry of a D-Bus address."""
    for entry in address.split(";"):
        kind, _, params = entry.partition(":")
        if kind != "unix":
            continue
        for param in params.split(","):
            key, _, value = param.partition("=")
            if key == "path":
                return value
            if key == "abstract":
                return "\0" + value
    return None


def bus_candidates(user):
    """[(socket path, is_private, description)] to try, in order; BusError if none can exist."""
    if not user:
        env = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
        if env:
            return [(_unix_path(env), False, f"$DBUS_SYSTEM_BUS_ADDRESS ({env})")]
        found = [("/run/dbus/system_bus_socket", False, "the system bus /run/dbus/system_bus_socket")]
        if os.geteuid() == 0:
            found.append(("/run/systemd/private", True, "the manager's private socket /run/systemd/private"))
        return found
    env = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if env:
        return [(_unix_path(env), False, f"$DBUS_SESSION_BUS_ADDRESS ({env})")]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime:
        raise BusError("cannot reach the user manager: neither DBUS_SESSION_BUS_ADDRESS nor "
                       "XDG_RUNTIME_DIR is set (log in with a session, or export XDG_RUNTIME_DIR=/run/user/"
                       f"{os.getuid()})")
    return [(os.path.join(runtime, "bus"), False, f"the user bus {runtime}/bus"),
            (os.path.join(runtime, "systemd", "private"), True,
             f"the user manager's private socket {runtime}/systemd/private")]


class Connection:
    """One authenticated connection to a manager, used for a few calls, then closed."""

    def __init__(self, user, timeout_s):
        from jeepney.low_level import Parser
        deadline = time.monotonic() + timeout_s
        self.deadline = deadline
        self.parser = Parser()
        self.pending = []
        self.serial = 0
        tried = []
        for path, private, what in bus_candidates(user):
            if path is None or (not path.startswith("\0") and not os.path.exists(path)):
                tried.append(f"{what}: missing")
                continue
            try:
                self._connect(path, private)
            except TimeoutError:
                tried.append(f"{what}: no answer within {timeout_s:g}s")
                self.close()
                continue
            except (OSError, BusError) as e:
                tried.append(f"{what}: {getattr(e, 'strerror', None) or e}")
                self.close()
                continue
            self.where = what
            return
        manager = "user manager" if user else "system manager"
        raise BusError(f"cannot reach the {manager}: " + "; ".join(tried))

    def _connect(self, path, private):
        from jeepney.auth import Authenticator, BEGIN
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(self._left())
        self.sock.connect(path)
        self.sock.sendall(b"\0")
        auth = Authenticator(inc_null_byte=False)
        for line in auth:
            self.sock.sendall(line)
            self.sock.settimeout(self._left())
            data = self.sock.recv(1024)
            if not data:
                raise BusError("the bus closed the connection during authentication")
            auth.feed(data)
        if not auth.authenticated:
            raise BusError(f"authentication refused ({auth.error})")
        self.sock.sendall(BEGIN)
        self.private = private
        if not private:     # a bus daemon wants Hello first; systemd's private socket rejects it
            self.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello")

    def _left(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer in time")
        return left

    def send(self, destination, path, interface, member, signature=None, body=()):
        from jeepney import DBusAddress, new_method_call
        msg = new_method_call(DBusAddress(path, destination, interface), member, signature, body)
        self.serial += 1
        self.sock.settimeout(self._left())
        self.sock.sendall(msg.serialise(serial=self.serial))
        return self.serial

    def receive(self):
        """The next message (parsed), waiting at most until the deadline."""
        while True:
            msg = self.parser.get_next_message()
            if msg is not None:
                return msg
            ready = select.select([self.sock], [], [], self._left())[0]
            if not ready:
                continue        # _left() raises once the deadline has passed
            data = self.sock.recv(65536)
            if not data:
                raise BusError("the bus closed the connection")
            self.parser.add_data(data)

    def call(self, destination, path, interface, member, signature=None, body=()):
        """Send a method call, return the reply's body; other messages are kept in self.pending."""
        from jeepney import HeaderFields, MessageType
        serial = self.send(destination, path, interface, member, signature, body)
        while True:
            msg = self.receive()
            if msg.header.fields.get(HeaderFields.reply_serial) != serial:
                self.pending.append(msg)
                continue
            if msg.header.message_type == MessageType.error:
                name = msg.header.fields.get(HeaderFields.error_name, "error")
                text = msg.body[0] if msg.body and isinstance(msg.body[0], str) else ""
                kind = UnitExists if name == f"{SYSTEMD}.UnitExists" else BusError
                raise kind(f"{member}: {name}: {text}".rstrip(": "))
            return msg.body

    def close(self):
        sock = getattr(self, "sock", None)
        if sock is not None:
            sock.close()
            self.sock = None


def unit_property(unit, name, user=False, timeout_s=CALL_TIMEOUT_S):
    """A property of `unit`, from the interface of its type (e.g. Service.Delegate)."""
    kind = unit.rpartition(".")[2]
    interface = f"{SYSTEMD}.{UNIT_INTERFACES.get(kind, 'Unit')}"
    conn = Connection(user, timeout_s)
    try:
        (path,) = conn.call(SYSTEMD, MANAGER_PATH, MANAGER, "GetUnit", "s", (unit,))
        (value,) = conn.call(SYSTEMD, path, "org.freedesktop.DBus.Properties", "Get", "ss", (interface, name))
        return value[1]     # a variant: (signature, value)
    except OSError as e:
        raise BusError(f"asking for {unit}'s {name}: {e.strerror or e}")
    finally:
        conn.close()


def start_scope(name, description, user=False, timeout_s=CALL_TIMEOUT_S):
    """Move this process into a new transient scope `name` with Delegate=yes.

    PIDs=[0] means the sender, as the manager sees it (SO_PEERCRED), so this
    works from inside a pid namespace too.  Returns the scope's name once its
    start job has finished with result "done"; BusError otherwise (the manager
    refused the unit, the name exists, the job failed or timed out).
    """
    from jeepney import HeaderFields, MessageType
    conn = Connection(user, timeout_s)
    try:
        if not conn.private:    # a bus daemon routes signals only to matching clients
            conn.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s",
                      (f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',member='JobRemoved'",))
        properties = [
            ("Description", ("s", description)),
            ("PIDs", ("au", [0])),
            ("Delegate", ("b", True)),
            ("CollectMode", ("s", "inactive-or-failed")),
        ]
        (job,) = conn.call(SYSTEMD, MANAGER_PATH, MANAGER, "StartTransientUnit", "ssa(sv)a(sa(sv))",
                           (name, "fail", properties, []))
        # JobRemoved(u id, o job, s unit, s result) may have come before the reply.
        while True:
            msg = conn.pending.pop(0) if conn.pending else conn.receive()
            if (msg.header.message_type == MessageType.signal
                    and msg.header.fields.get(HeaderFields.member) == "JobRemoved"
                    and msg.body[1] == job):
                result = msg.body[3]
                if result != "done":
                    raise BusError(f"the manager's job to start {name} ended with result {result!r}")
                return name
    except OSError as e:
        raise BusError(f"starting {name}: {e.strerror or e}")
    finally:
        conn.close()
