"""The import graph of ``daemon`` and ``capture``: no cycle, no upward import across layers.

Every module is parsed (not imported), and every ``import daemon.x`` / ``from daemon.x import
y`` / ``from capture.x import y`` in it counts, at module level or inside a function (a lazy
import is still a dependency). A room may import its own modules and rooms on lower layers;
rooms on the same layer are independent of each other.

    8  daemon.__main__ (``python -m daemon``)
    7  cli
    6  api, training
    5  ops
    4  capture, worker, lis
    3  inference
    2  imaging, store
    1  settings, shutdown, telemetry (process-local metrics)
    0  domain (and the ``daemon`` package itself: ``__version__``)

capture/ is a top-level package but a room like the others: it may use daemon's settings,
domain, imaging and store, and only the API (HTTP push) and the CLI use it. Redis key names
("lks:...") are written in daemon/store/keys.py and nowhere else.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("daemon", "capture")

LAYERS: dict[str, int] = {
    "daemon": 0,
    "daemon.domain": 0,
    "daemon.settings": 1,
    "daemon.shutdown": 1,
    "daemon.telemetry": 1,
    "daemon.imaging": 2,
    "daemon.store": 2,
    "daemon.inference": 3,
    "capture": 4,
    "daemon.worker": 4,
    "daemon.lis": 4,
    "daemon.ops": 5,
    "daemon.api": 6,
    "daemon.training": 6,
    "daemon.cli": 7,
    "daemon.__main__": 8,  # python -m daemon: runs the CLI
}
# What capture may use of daemon (issue 12): never the API, workers, LIS, ops or the CLI.
CAPTURE_MAY_USE = {"daemon", "daemon.settings", "daemon.shutdown", "daemon.telemetry",
                   "daemon.domain", "daemon.imaging", "daemon.store"}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int

    def __str__(self) -> str:
        return (
            f"{self.source} [{describe(self.source)}] -> {self.target} [{describe(self.target)}]"
            f"  (line {self.line})"
        )


def module_names(root: Path = ROOT) -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: Iterable[str]) -> str | None:
    """``name`` if it is one of ours, else its closest enclosing module of ours."""
    known = set(modules)
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    edges = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from daemon.store import keys`` depends on daemon.store.keys, not the package.
            targets = [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != module:
                edges.append(Edge(module, resolved, node.lineno))
    return edges


def import_graph(root: Path = ROOT) -> list[Edge]:
    modules = module_names(root)
    return [edge for m, p in modules.items() for edge in imports_of(m, p, modules)]


def room_of(module: str) -> str | None:
    """The longest LAYERS key that is the module or a package holding it."""
    if module == "daemon":
        return "daemon"
    rooms = [r for r in LAYERS if r != "daemon" and (module == r or module.startswith(r + "."))]
    return max(rooms, key=len) if rooms else None


def describe(module: str) -> str:
    room = room_of(module)
    return "no room" if room is None else f"{room}, layer {LAYERS[room]}"


def upward(edges: Iterable[Edge]) -> list[Edge]:
    """Imports of a higher layer, or of another room on the same layer."""
    bad = []
    for edge in edges:
        source, target = room_of(edge.source), room_of(edge.target)
        if source is None or target is None or source == target:
            continue
        if LAYERS[target] > LAYERS[source] or (
            LAYERS[target] == LAYERS[source] and target != "daemon"
        ):
            bad.append(edge)
    return bad


def cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _listing(lines: Iterable[object]) -> str:
    return "\n  " + "\n  ".join(str(line) for line in lines)


# --- the checks ---------------------------------------------------------------------------
def test_every_module_has_a_room() -> None:
    homeless = [m for m in module_names() if room_of(m) is None]
    assert not homeless, (
        "modules outside every room of tests/test_architecture.py LAYERS (put them in a "
        f"room or add the room with its layer):{_listing(homeless)}"
    )


def test_no_import_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles (modules that import each other, directly or not):" + (
        _listing(" -> ".join(component) for component in found)
    )


def test_no_upward_import_across_layers() -> None:
    bad = upward(import_graph())
    assert not bad, (
        "imports of a higher layer or of a sibling room (move the code down, or pass a value "
        f"or a callback up):{_listing(sorted(bad, key=str))}"
    )


def test_capture_uses_only_settings_domain_imaging_store() -> None:
    bad = [
        e
        for e in import_graph()
        if room_of(e.source) == "capture"
        and e.target.startswith("daemon")
        and room_of(e.target) not in CAPTURE_MAY_USE
    ]
    assert not bad, f"capture imports beyond daemon's settings/domain/imaging/store:{_listing(bad)}"


def test_the_checks_catch_what_they_should(tmp_path: Path) -> None:
    """The graph code itself: a planted cycle and upward import are found and named."""
    store, ops = tmp_path / "daemon" / "store", tmp_path / "daemon" / "ops"
    for folder in (store, ops, tmp_path / "capture"):
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("")
    (tmp_path / "daemon" / "__init__.py").write_text("")
    (store / "queue.py").write_text("from daemon.store import results\n")
    (store / "results.py").write_text("def f():\n    from daemon.store.queue import X\n")
    (store / "counts.py").write_text("from daemon.ops import metrics\n")
    (ops / "metrics.py").write_text("from .. import store\n")
    edges = import_graph(tmp_path)
    assert cycles(edges) == [["daemon.store.queue", "daemon.store.results"]]
    assert [str(e) for e in upward(edges)] == [
        "daemon.store.counts [daemon.store, layer 2] -> daemon.ops.metrics [daemon.ops, layer 5]"
        "  (line 1)"
    ]
    assert Edge("daemon.ops.metrics", "daemon.store", 1) in edges  # relative import resolved


def test_every_redis_key_is_named_in_store_keys() -> None:
    """Key names ("lks:...") are written only in daemon/store/keys.py (issue 12)."""
    home = ROOT / "daemon" / "store" / "keys.py"
    stray = []
    for module, path in module_names().items():
        if path == home:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.startswith("lks:")
            ):
                stray.append(f"{module} line {node.lineno}: {node.value!r}")
    assert not stray, f"Redis key names outside daemon/store/keys.py:{_listing(stray)}"


# Redis commands that redis-py's client and pipeline offer under these names. Names that
# ordinary Python objects also have (get, set, delete, keys, info, append, copy, unlink, scan,
# lock, ...) are left out here; a call of any method on a ``client`` catches those (below).
REDIS_COMMANDS = frozenset("""
    bitcount blpop brpop bzpopmin dbsize decrby evalsha expire expireat flushall flushdb getdel
    getex getset hdel hexists hget hgetall hincrby hincrbyfloat hkeys hlen hmget hmset hscan
    hscan_iter hset hsetnx hstrlen hvals incr incrby incrbyfloat lindex linsert llen lmove lpop
    lpush lrange lrem lset ltrim memory_usage mget mset msetnx persist pexpire pexpireat pfadd
    pfcount ping pipeline psetex pttl publish register_script renamenx rpop rpush sadd scan_iter
    scard sdiff sinter sismember smembers smove spop srandmember srem sscan sunion setex setnx
    setrange strlen ttl xack xadd xautoclaim xclaim xdel xgroup_create xgroup_createconsumer
    xgroup_delconsumer xgroup_destroy xgroup_setid xinfo_consumers xinfo_groups xinfo_stream
    xlen xpending xpending_range xrange xread xreadgroup xrevrange xtrim zadd zcard zcount
    zincrby zpopmax zpopmin zrange zrangebyscore zrank zrem zremrangebyrank zremrangebyscore
    zrevrange zrevrangebyscore zrevrank zscan zscore
""".split())
CLIENT_NAMES = frozenset({"client", "redis_client", "pipe", "pipeline"})
CLIENT_METHODS_ALLOWED = frozenset({"close"})  # ending a connection is not a command


def _receiver_name(node: ast.expr) -> str | None:
    """``client`` for ``client.x``, ``self.client.x`` and ``request.app.state.client.x``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def redis_calls(module: str, source: str) -> list[str]:
    """Direct uses of Redis in one module's source: what only daemon/store/ may do."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "redis":
            for alias in node.names:
                if node.module != "redis.exceptions" and not alias.name.endswith("Error"):
                    found.append(f"{module} line {node.lineno}: from {node.module} import "
                                 f"{alias.name}")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        method, receiver = node.func.attr, node.func.value
        if _root_name(node.func) == "redis":
            found.append(f"{module} line {node.lineno}: redis.…{method}(…)")
        elif method in REDIS_COMMANDS:
            found.append(f"{module} line {node.lineno}: .{method}(…)")
        elif _receiver_name(receiver) in CLIENT_NAMES and method not in CLIENT_METHODS_ALLOWED:
            found.append(f"{module} line {node.lineno}: {_receiver_name(receiver)}.{method}(…)")
    return found


def test_redis_is_used_only_in_store() -> None:
    """Redis only in daemon/store/ (issue 12): every command goes through a store function.

    Outside daemon/store/, in daemon/ and capture/, a module may hold a client (``redis.Redis``
    as a type hint, passed from ``daemon.store.connection.connect``) and hand it to store
    functions, and may catch redis-py's exception classes, but it may not:

    * call a method named after a Redis command (``REDIS_COMMANDS``: ``.hget(``, ``.xadd(``,
      ``.zadd(``, ``.pipeline(``, ``.ping(`` ...) on anything;
    * call any other method (``get``, ``set``, ``info``, ``lock`` ...) on an object named
      ``client``, ``redis_client``, ``pipe`` or ``pipeline`` (``client.close()`` is allowed);
    * call anything reached through the ``redis`` module (``redis.Redis(...)``,
      ``redis.Redis.from_url(...)``): clients are made in daemon/store/connection.py;
    * ``from redis... import`` anything but exception classes (``*Error``, redis.exceptions).

    Tests may use Redis directly to arrange and inspect data.
    """
    store = ROOT / "daemon" / "store"
    found = [
        hit
        for module, path in module_names().items()
        if store not in path.parents
        for hit in redis_calls(module, path.read_text(encoding="utf-8"))
    ]
    assert not found, (
        "Redis used outside daemon/store/ (add a function to a store module and call that):"
        + _listing(found)
    )


def test_the_redis_check_catches_what_it_should() -> None:
    source = (
        "import redis\nfrom redis.lock import Lock\nfrom redis.exceptions import LockError\n"
        "def f(client, self, log, d):\n"
        "    client.hget('k', 'f')\n    self.client.get('k')\n    client.close()\n"
        "    redis.Redis(unix_socket_path='s')\n    log.info('x')\n    d.get('k')\n"
        "    self.queue.xadd('s', {})\n"
        "    try:\n        pass\n    except redis.RedisError:\n        pass\n"
    )
    assert redis_calls("m", source) == [
        "m line 2: from redis.lock import Lock",
        "m line 5: .hget(…)",
        "m line 6: client.get(…)",
        "m line 8: redis.…Redis(…)",
        "m line 11: .xadd(…)",
    ]
