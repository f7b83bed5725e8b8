"""The agent's link graph: which object files need which (issue 14).

Every agent/*.c is compiled alone into an object (no warnings allowed), `nm`
reads the symbols each defines and needs, and an object links against the
objects that define what it needs. That graph must be a tree (no cycle), but
for one edge: spawn.o -> worker.o, an op starting a new worker loop. And every
op in the ops table (ops.c) must link without the worker loop (worker.o) and
without the table (ops.o), so an op file builds and tests alone.
"""

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from provium import agent_build

CFLAGS = ["-c", "-O2", "-Wall", "-Wextra"]
# Edges allowed to close a cycle: spawn starts a new worker loop.
ALLOWED = {("spawn.o", "worker.o")}
# A row of the ops table: { "name", function },
OP_ROW = re.compile(r'\{\s*"(\w+)"\s*,\s*(\w+)\s*\}')


def compile_agent(src, out):
    """Compile every .c of src into out: {object name: compiler warnings (stderr)}."""
    cc = agent_build._compiler()

    def one(source):
        obj = out / (source.stem + ".o")
        result = subprocess.run([cc, *CFLAGS, "-o", str(obj), str(source)], capture_output=True, text=True)
        assert result.returncode == 0, f"{source.name} does not compile:\n{result.stderr}"
        return obj.name, result.stderr

    with ThreadPoolExecutor() as pool:
        return dict(pool.map(one, sorted(src.glob("*.c"))))


def symbols(obj):
    """(defined, undefined) global symbols of an object, by `nm -P`."""
    defined, undefined = set(), set()
    for line in subprocess.run(["nm", "-P", str(obj)], capture_output=True, text=True, check=True).stdout.splitlines():
        name, kind = line.split()[:2]
        if kind == "U":
            undefined.add(name)
        elif kind.isupper():
            defined.add(name)
    return defined, undefined


def link_graph(out, objects):
    """({object: objects defining a symbol it needs}, {symbol: defining object})."""
    syms = {name: symbols(out / name) for name in objects}
    owner = {sym: name for name, (defined, _) in syms.items() for sym in defined}
    graph = {name: {owner[sym] for sym in undefined if sym in owner and owner[sym] != name}
             for name, (_, undefined) in syms.items()}
    return graph, owner


def without(graph, edges):
    return {name: needs - {to for frm, to in edges if frm == name} for name, needs in graph.items()}


def find_cycle(graph):
    """One cycle of graph as a list of objects (first == last), or None."""
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def reach(graph, start):
    """Every object start links against, directly or not."""
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def op_table(src):
    """[(op name, function)] of the rows of the ops table in ops.c ([] without one)."""
    path = src / "ops.c"
    return OP_ROW.findall(path.read_text()) if path.is_file() else []


def op_reach(src, graph, owner):
    """{op name: (its object, what that object reaches without the allowed edges)}."""
    tree = without(graph, ALLOWED)
    return {name: (owner.get(fn), sorted(reach(tree, owner[fn])) if fn in owner else None)
            for name, fn in op_table(src)}


def show(graph):
    return "\n".join(f"  {name} -> {' '.join(sorted(needs)) or '-'}" for name, needs in sorted(graph.items()))


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    if not shutil.which("nm"):
        pytest.skip("nm (binutils) is not installed")
    src = agent_build.source_dir()
    out = tmp_path_factory.mktemp("agent-objects")
    warnings = compile_agent(src, out)
    graph, owner = link_graph(out, warnings)
    return src, warnings, graph, owner


def test_every_agent_file_compiles_alone_without_warnings(agent):
    _, warnings, _, _ = agent
    noisy = {name: text for name, text in warnings.items() if text.strip()}
    assert not noisy, "\n".join(f"{name}:\n{text}" for name, text in noisy.items())


def test_link_graph_is_a_tree_but_for_spawn_starting_a_worker(agent):
    _, _, graph, _ = agent
    print("link graph (object -> objects it needs):\n" + show(graph))
    cycle = find_cycle(without(graph, ALLOWED))
    assert cycle is None, f"link cycle {' -> '.join(cycle)}; the graph:\n{show(graph)}"


def test_every_op_links_without_the_worker_loop_or_the_table(agent):
    src, _, graph, owner = agent
    ops = op_reach(src, graph, owner)
    print("ops (op: object, objects it reaches):\n" + "\n".join(
        f"  {name}: {obj} -> {' '.join(objs or [])}" for name, (obj, objs) in ops.items()))
    assert len(ops) >= 9, f"the ops table in ops.c has {len(ops)} rows"
    for name, (obj, objs) in ops.items():
        assert obj not in (None, "ops.o", "worker.o"), f"op {name}: its function is defined in {obj}, not an op file"
        assert not {"worker.o", "ops.o"} & set(objs), f"op {name} ({obj}) links against {objs}"
