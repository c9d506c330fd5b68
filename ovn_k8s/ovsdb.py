"""A typed facade over ovsdbapp for the OVN NB, OVN SB and local Open_vSwitch databases.

Everything above this module (topology builders, handlers, the CNI) goes through it, so
the rules that keep OVSDB access correct live in one place:

* one IDL connection per database and remote per process, shared by whoever asks;
* each connection gets its own ovsdbapp backend class, because ovsdbapp keeps the
  connection in a *class* attribute and two databases (or two remotes in a test) would
  otherwise silently share one;
* only the tables a caller needs are monitored, which keeps the in-memory replica
  and the initial dump small on big clusters;
* every transaction raises on error (``check_error=True``): a write we think happened
  but did not is the bug the lineage suffered from most;
* connecting is retried with backoff for a bounded time, and failure names the remote.

Nothing here knows about Kubernetes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import tenacity
from ovs import jsonrpc, poller, stream, timeval
from ovs.db import data as ovs_data
from ovs.db import idl as ovs_idl
from ovsdbapp import api as ovsdbapp_api
from ovsdbapp.backend.ovs_idl import command as ovsdbapp_command
from ovsdbapp.backend.ovs_idl import connection, idlutils
from ovsdbapp.backend.ovs_idl import transaction as ovs_transaction
from ovsdbapp.schema.open_vswitch import impl_idl as ovs_impl
from ovsdbapp.schema.ovn_northbound import impl_idl as nb_impl
from ovsdbapp.schema.ovn_southbound import impl_idl as sb_impl

LOG = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
REMOTE_PREFIXES = ("unix:", "tcp:", "ssl:")

# The tables each database's users touch. Callers may narrow or widen this per
# connection; monitoring everything would replicate e.g. every SB logical flow.
NB_TABLES: tuple[str, ...] = (
    "NB_Global",
    "Logical_Switch",
    "Logical_Switch_Port",
    "Logical_Router",
    "Logical_Router_Port",
    "Logical_Router_Static_Route",
    "Logical_Router_Policy",
    "Gateway_Chassis",
    "NAT",
    "Load_Balancer",
    "Load_Balancer_Group",
    "ACL",
    "Port_Group",
    "Address_Set",
)
# Tables monitored with only the columns we write. ovn-northd writes
# Logical_Switch_Port.up on every new port; monitoring it cost our replica a second
# update (parse, index removal and re-insertion) per pod wired. (ovsdbapp's lsp_add
# with may_exist reads parent_name: register the table whole to use it.)
NB_COLUMNS: dict[str, tuple[str, ...]] = {
    "Logical_Switch_Port": ("name", "type", "addresses", "port_security", "options",
                            "external_ids"),
}
SB_TABLES: tuple[str, ...] = (
    "SB_Global",
    "Chassis",
    "Chassis_Private",
    "Encap",
    "Datapath_Binding",
    "Port_Binding",
)
OVS_TABLES: tuple[str, ...] = ("Open_vSwitch", "Bridge", "Port", "Interface")


class OvsdbError(Exception):
    """Base of the errors this module raises."""


class OvsdbConnectError(OvsdbError):
    """The database could not be reached (or its schema read) in time."""


class OvsdbTransactionError(OvsdbError):
    """A transaction failed; the message names the database and the commands."""


@dataclass(frozen=True)
class SslConfig:
    """Files for ``ssl:`` remotes, as ovn-nbctl's ``-p/-c/-C`` take them.

    The ovs library keeps these process-wide, so every ``ssl:`` connection in a
    process must use the same files; :func:`_apply_ssl` enforces that.
    """

    private_key: str
    certificate: str
    ca_cert: str


def validate_remote(remote: str) -> list[str]:
    """Split a (possibly comma-separated, clustered) remote and check each part.

    Raises ValueError with the offending part, so a typo in a flag is reported
    before any connection attempt.
    """
    parts = [p.strip() for p in remote.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"empty OVSDB remote {remote!r}")
    for part in parts:
        if not part.startswith(REMOTE_PREFIXES):
            raise ValueError(
                f"bad OVSDB remote {part!r}: expected unix:PATH, tcp:IP:PORT or ssl:IP:PORT"
            )
        if part.startswith(("tcp:", "ssl:")):
            host, _, port = part[4:].rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"bad OVSDB remote {part!r}: expected {part[:3]}:IP:PORT")
    return parts


_ssl_lock = threading.Lock()
_ssl_in_use: SslConfig | None = None


def _apply_ssl(remotes: Sequence[str], ssl: SslConfig | None) -> None:
    global _ssl_in_use
    if not any(r.startswith("ssl:") for r in remotes):
        return
    if ssl is None:
        raise ValueError("ssl: remote given without private key, certificate and CA cert")
    with _ssl_lock:
        if _ssl_in_use is not None and _ssl_in_use != ssl:
            raise ValueError("a different SSL configuration is already in use in this process")
        stream.Stream.ssl_set_private_key_file(ssl.private_key)
        stream.Stream.ssl_set_certificate_file(ssl.certificate)
        stream.Stream.ssl_set_ca_cert_file(ssl.ca_cert)
        _ssl_in_use = ssl


def _fetch_schema_once(remotes: Sequence[str], schema: str, timeout: float) -> dict:
    """Read ``schema`` from the first remote that answers, bounded by ``timeout``.

    ovsdbapp's own fetch blocks without limit on a remote that accepts and never
    answers; this one gives each step a deadline so a bad remote fails in time.
    """
    errors: list[str] = []
    for remote in remotes:
        rpc = _open_rpc(remote, timeout, errors)
        if rpc is None:
            continue
        try:
            reply = _transact_with_deadline(
                rpc, jsonrpc.Message.create_request("get_schema", [schema]), timeout
            )
        finally:
            rpc.close()
        if isinstance(reply, str):
            errors.append(f"{remote}: {reply}")
        elif reply.error:
            errors.append(f"{remote}: {reply.error}")
        else:
            return reply.result
    raise OvsdbConnectError("; ".join(errors))


def _open_rpc(remote: str, timeout: float, errors: list[str]) -> jsonrpc.Connection | None:
    """A JSON-RPC connection to ``remote``, or None with the reason added to ``errors``."""
    err, strm = stream.Stream.open_block(stream.Stream.open(remote), int(timeout * 1000))
    if err:
        errors.append(f"{remote}: {_strerror(err)}")
        return None
    return jsonrpc.Connection(strm)


def _transact_with_deadline(
    rpc: jsonrpc.Connection, request: jsonrpc.Message, timeout: float
) -> jsonrpc.Message | str:
    deadline = timeval.msec() + int(timeout * 1000)
    err = rpc.send(request)
    if err:
        return _strerror(err)
    while True:
        err, msg = rpc.recv()
        if msg is not None and msg.id == request.id:
            return msg
        if err and err != errno.EAGAIN:
            return _strerror(err)
        if timeval.msec() >= deadline:
            return f"{_NO_ANSWER} {timeout:g}s"
        rpc.run()
        p = poller.Poller()
        rpc.wait(p)
        rpc.recv_wait(p)
        p.timer_wait_until(deadline)
        p.block()


_NO_ANSWER = "no answer within"


def _strerror(err: int) -> str:
    return os.strerror(err) if err > 0 else "connection closed"


class EnsureRow(ovsdbapp_command.BaseCommand):
    """Create the row of ``table`` that ``key`` identifies, or converge its ``columns``.

    ovsdbapp's ``*_add(may_exist=True)`` leaves an existing row as it is; this
    converges it instead, so a command run again after a crash or a config change
    ends in the state it asks for. Writing a value a column already holds is not
    sent (the IDL drops it), so a rerun with nothing to change writes nothing.

    ``key`` is a dict of column values that identifies the row (usually its name).
    ``parent=(table, name, column)`` links the row into its parent, as OVN needs
    for non-root rows (ports, routes, NAT); name None means the table's only row
    (``Open_vSwitch``, ``NB_Global``). The row is then the row is looked for among
    the parent's children only: two routers may each hold a route to 0.0.0.0/0.
    Column values may be earlier commands of the same transaction; their results
    (rows) are used.
    """

    def __init__(
        self,
        api: Any,
        table: str,
        key: dict[str, Any],
        parent: tuple[str, str | None, str] | None = None,
        **columns: Any,
    ) -> None:
        super().__init__(api)
        self.table = table
        self.key = key
        self.parent = parent
        self.columns = columns

    def run_idl(self, txn: Any) -> None:
        prow = None
        if self.parent is not None:
            ptable, pname, pcolumn = self.parent
            prow = (
                next(iter(self.api.tables[ptable].rows.values()))
                if pname is None
                else idlutils.row_by_value(self.api.idl, ptable, "name", pname)
            )
            # A parent inserted earlier in this transaction has no value to read yet.
            candidates = getattr(prow, pcolumn, ())
        elif list(self.key) == ["name"]:
            found = idlutils.row_by_value(self.api.idl, self.table, "name", self.key["name"], None)
            candidates = [found] if found is not None else []
        else:
            candidates = self.api.tables[self.table].rows.values()
        row = next((r for r in candidates if _matches(r, self.key)), None)
        if row is None:
            row = txn.insert(self.api.tables[self.table])
            self.set_columns(row, **self.key)
            if prow is not None:
                prow.addvalue(self.parent[2], row)
        self.set_columns(row, **{k: _resolve(v) for k, v in self.columns.items()})
        self.result = row


def _matches(row: Any, key: dict[str, Any]) -> bool:
    return all(getattr(row, col, None) == value for col, value in key.items())


def _resolve(value: Any) -> Any:
    if isinstance(value, ovsdbapp_api.Command):
        return value.result
    if isinstance(value, list | tuple):
        return [v.result if isinstance(v, ovsdbapp_api.Command) else v for v in value]
    return value


class _Idl(connection.OvsdbIdl):
    def cooperative_yield(self) -> None:
        """ovsdbapp sleeps(0) after every row of an update, so that eventlet's green
        threads are not starved. With OS threads each sleep hands the GIL away and
        waits to get it back: measured here, half of the 10 s it took to load a
        10k-port NB at start, and most of a 500-port commit under load."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Notified after each run() that changed the replica (see wait_replica).
        self.changed = threading.Condition(threading.Lock())

    def run(self) -> Any:
        seqno = self.change_seqno
        result = super().run()
        if self.change_seqno != seqno:
            with self.changed:
                self.changed.notify_all()
        return result


class Database:
    """One shared IDL connection to one database (schema) at one remote."""

    schema: ClassVar[str]
    default_tables: ClassVar[tuple[str, ...]]
    columns: ClassVar[dict[str, tuple[str, ...]]] = {}
    backend_base: ClassVar[type]

    def __init__(
        self,
        remote: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float | None = None,
        tables: Iterable[str] | None = None,
        ssl: SslConfig | None = None,
    ) -> None:
        self.remote = remote
        self.timeout = timeout
        self._remotes = validate_remote(remote)
        _apply_ssl(self._remotes, ssl)
        self._tables = tuple(tables) if tables is not None else self.default_tables
        self._connect_timeout = timeout if connect_timeout is None else connect_timeout
        self._refs = 1
        self._raw: jsonrpc.Connection | None = None
        self._raw_lock = threading.Lock()
        self.api = self._connect()

    def _connect(self) -> Any:
        helper = ovs_idl.SchemaHelper(None, self._fetch_schema())
        for table in self._tables:
            if table in self.columns:
                helper.register_columns(table, list(self.columns[table]))
            else:
                helper.register_table(table)
        idl = _Idl(self.remote, helper, leader_only=True)
        conn = connection.Connection(idl, timeout=self.timeout)
        # A class per connection: ovsdbapp stores the connection on the class.
        backend_cls = type(
            f"{self.backend_base.__name__}_{id(conn):x}",
            (self.backend_base,),
            {"_ovsdb_connection": None},
        )
        try:
            return backend_cls(conn)
        except Exception as e:
            conn.stop(timeout=1)
            raise OvsdbConnectError(
                f"cannot connect to {self.schema} at {self.remote}: {e}"
            ) from e

    def _fetch_schema(self) -> dict:
        # Short, growing waits: a database that is starting (lab, sandbox, a raft
        # member electing) usually answers within a second.
        attempt_timeout = max(0.2, min(2.0, self._connect_timeout / 4))
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(self._connect_timeout - attempt_timeout),
            wait=tenacity.wait_exponential(multiplier=0.05, max=0.5),
            retry=tenacity.retry_if_exception_type(OvsdbConnectError),
            reraise=True,
        )
        try:
            return retrying(_fetch_schema_once, self._remotes, self.schema, attempt_timeout)
        except OvsdbConnectError as e:
            raise OvsdbConnectError(
                f"cannot connect to {self.schema} at {self.remote} "
                f"(gave up after {self._connect_timeout:g}s): {e}"
            ) from None

    @property
    def idl(self) -> ovs_idl.Idl:
        return self.api.idl

    @contextlib.contextmanager
    def replica(self) -> Iterator[Any]:
        """The IDL's in-memory replica (the ovsdbapp API), held still while in use.

        ovsdbapp's thread applies updates under its connection's (reentrant) lock.
        Reading without it races with them: a copy of a table's rows fails with
        "dictionary changed size", and a name-index lookup can miss a row or return
        another (seen here: a pod's port lookup returned its neighbour's). Keep the
        block short; the replica stops following the server while it is held.
        """
        with self.api.ovsdb_connection.lock:
            yield self.api

    def rows(self, table: str) -> list[Any]:
        """A snapshot of the IDL's in-memory rows of ``table``: read-only, no round trip.

        Resync diffs against this instead of querying per object.
        """
        with self.replica() as api:
            return list(api.tables[table].rows.values())

    @staticmethod
    def map_get(row: Any, column: str, keys: Iterable[str]) -> dict[str, Any]:
        """The entries of some keys of a string-keyed map column, as the IDL last
        received them (absent keys are left out): O(len(keys)).

        Reading ``row.<column>`` instead converts the whole map three times in the
        pure-Python IDL (to Python, back to a checked Datum, to Python again): ~45 ms
        for a load balancer with 2000 VIPs, which made that read most of the cost of
        an endpoint change.
        """
        try:
            values = row._data[column].values  # committed state, not a pending txn's
        except (AttributeError, KeyError, TypeError):  # a row being inserted
            current = getattr(row, column, None) or {}
            return {k: current[k] for k in keys if k in current}
        out = {}
        for k in keys:
            atom = values.get(ovs_data.Atom.new(k))
            if atom is not None:
                out[k] = atom.value
        return out

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """One OVSDB transaction; commands added to it commit together or not at all."""
        with self._errors(), self.api.transaction(check_error=True, log_errors=False) as txn:
            yield txn

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except OvsdbError:
            raise
        except Exception as e:
            raise OvsdbTransactionError(f"{self.schema} at {self.remote}: {e}") from e

    def execute(self, *commands: ovsdbapp_api.Command) -> list[Any]:
        """Run ``commands`` in one transaction and return their results in order."""
        with self.transaction() as txn:
            for cmd in commands:
                txn.add(cmd)
        return [cmd.result for cmd in commands]

    def transact(self, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run raw OVSDB operations (RFC 7047, 5.2) as one transaction, beside the IDL.

        For bulk inserts: building rows through the IDL's transaction objects cost
        about twice the CPU of the whole raw request here (measured: ~1.1 against
        ~0.5 ms per pod port, our replica's processing of the update included).
        Returns the per-operation results; any error raises OvsdbTransactionError, and
        then nothing was written. Our replica learns of the change through its
        monitor a moment later: callers that read it next use :meth:`wait_replica`.
        """
        request = jsonrpc.Message.create_request("transact", [self.schema, *ops])
        with self._raw_lock:
            reused = self._raw is not None
            reply = self._raw_request(request)
            if isinstance(reply, str) and reused and not reply.startswith(_NO_ANSWER):
                # The server drops connections that stay idle; a request that found
                # ours closed was never read, so it is safe to send again (one that
                # timed out may have been, so that one is not).
                reply = self._raw_request(request)
        if isinstance(reply, str):
            raise OvsdbTransactionError(f"{self.schema} at {self.remote}: {reply}")
        if reply.error:
            raise OvsdbTransactionError(f"{self.schema} at {self.remote}: {reply.error}")
        errors = [r for r in reply.result if isinstance(r, dict) and "error" in r]
        if errors:
            raise OvsdbTransactionError(
                f"{self.schema} at {self.remote}: "
                + "; ".join(f"{e['error']}: {e.get('details', '')}" for e in errors))
        return list(reply.result)

    def _raw_request(self, request: jsonrpc.Message) -> jsonrpc.Message | str:
        if self._raw is None:
            errors: list[str] = []
            for remote in self._remotes:
                self._raw = _open_rpc(remote, self.timeout, errors)
                if self._raw is not None:
                    break
            else:
                return "; ".join(errors)
        assert self._raw is not None
        reply = _transact_with_deadline(self._raw, request, self.timeout)
        if isinstance(reply, str):
            self._raw.close()
            self._raw = None
        return reply

    def wait_replica(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until ``done()`` holds on our replica (after :meth:`transact`).

        Woken by each change the replica applies, not by polling: a poll's period
        was most of a one-port DEL's time."""
        idl = self.idl
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            # Read before done(): a change applied in between ends the wait at once.
            # done() takes the connection's lock, so it is never called holding
            # `changed` (the connection thread takes them in the other order).
            seqno = idl.change_seqno
            if done():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with idl.changed:
                idl.changed.wait_for(lambda s=seqno: idl.change_seqno != s, remaining)

    def ensure(
        self,
        table: str,
        name: str | None = None,
        *,
        key: dict[str, Any] | None = None,
        parent: tuple[str, str | None, str] | None = None,
        **columns: Any,
    ) -> EnsureRow:
        """A command that creates or converges one row; see :class:`EnsureRow`.

        The row is identified by ``name`` or, for unnamed rows, by ``key``.
        """
        if (name is None) == (key is None):
            raise ValueError("ensure() needs exactly one of name and key")
        return EnsureRow(self.api, table, key or {"name": name}, parent=parent, **columns)

    def close(self) -> None:
        """Drop one reference; the last one stops the connection thread."""
        with _registry_lock:
            self._refs -= 1
            if self._refs > 0:
                return
            _registry.pop((type(self), self.remote), None)
        conn = self.api.ovsdb_connection
        if conn is not None:
            conn.stop(timeout=self.timeout)
        with self._raw_lock:
            if self._raw is not None:
                self._raw.close()
                self._raw = None

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NbDb(Database):
    schema = "OVN_Northbound"
    default_tables = NB_TABLES
    columns = NB_COLUMNS
    backend_base = nb_impl.OvnNbApiIdlImpl


class SbDb(Database):
    schema = "OVN_Southbound"
    default_tables = SB_TABLES
    backend_base = sb_impl.OvnSbApiIdlImpl


class _NoWaitTransaction(ovs_transaction.Transaction):
    """An Open_vSwitch transaction that does not bump ``next_cfg`` nor wait for
    ovs-vswitchd to reach it."""

    def pre_commit(self, txn: Any) -> None:
        txn.expected_ifaces = set()  # ovsdbapp's add_port records its interface there


class OvsDb(Database):
    schema = "Open_vSwitch"
    default_tables = OVS_TABLES
    backend_base = ovs_impl.OvsdbIdl

    def execute_no_wait(self, *commands: ovsdbapp_api.Command) -> list[Any]:
        """:meth:`execute` without waiting for ovs-vswitchd to apply the change
        (``ovs-vsctl --no-wait``); that wait is 20-70 ms here, and the ovsdbapp
        transaction that waits only logs the interfaces vswitchd failed to open."""
        with self._errors(), _NoWaitTransaction(
                self.api, self.api.ovsdb_connection, check_error=True,
                log_errors=False) as txn:
            for cmd in commands:
                txn.add(cmd)
        return [cmd.result for cmd in commands]


_registry_lock = threading.Lock()
_registry: dict[tuple[type, str], Database] = {}


def _shared(cls: type[Database], remote: str, **kwargs: Any) -> Any:
    with _registry_lock:
        db = _registry.get((cls, remote))
        if db is not None:
            _check_tables(db, kwargs.get("tables"))
            db._refs += 1
            return db
    db = cls(remote, **kwargs)
    with _registry_lock:
        existing = _registry.get((cls, remote))
        if existing is not None:
            # Lost a race with another thread: keep theirs, drop ours.
            existing._refs += 1
            db._refs = 1
            db.close()
            return existing
        _registry[(cls, remote)] = db
    return db


def _check_tables(db: Database, wanted: Iterable[str] | None) -> None:
    # The monitored tables are fixed once the shared connection exists; a later
    # caller needing more must say so at the first connect, not get KeyErrors.
    missing = set(wanted or ()) - set(db._tables)
    if missing:
        raise ValueError(
            f"{db.schema} at {db.remote} is already open without tables {sorted(missing)}"
        )


def connect_nb(remote: str, **kwargs: Any) -> NbDb:
    """The process's connection to the OVN Northbound DB at ``remote``."""
    return _shared(NbDb, remote, **kwargs)


def connect_sb(remote: str, **kwargs: Any) -> SbDb:
    """The process's connection to the OVN Southbound DB at ``remote``."""
    return _shared(SbDb, remote, **kwargs)


def connect_ovs(remote: str = "unix:/var/run/openvswitch/db.sock", **kwargs: Any) -> OvsDb:
    """The process's connection to the local Open_vSwitch DB."""
    return _shared(OvsDb, remote, **kwargs)
