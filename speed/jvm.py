"""Options for the JVM PyFlink starts: where its JIT compilers spend the start.

On two cores the job's start is bound by CPU, and half of the JVM's CPU before the job
reads its first record went to C2, HotSpot's optimising compiler (7.5 of 21 s, measured
per thread): it compiles whatever runs often during the start, which is the planner
(Calcite, Janino, ANTLR), Java serialisation of the job graph, class loading and ASM —
code that runs once per start and is done before C2 has finished with it.

:func:`jit_directives` keeps C2 for the code every record passes through (Flink's
runtime, the table runtime's data structures, the generated operators, JSON parsing,
pemja) and leaves everything else to C1, which compiles ten times faster. Measured with
``benchmarks/bench_speed.py`` on 2 cores: C2's CPU before the first record 7.5 → 1.9 s,
launch → reading about 2 s sooner, the same throughput (``docs/speed.md``).
``-XX:TieredStopAtLevel=1`` (C1 for everything) starts as fast but reads 10% slower.
"""

from __future__ import annotations

import os
from pathlib import Path

from saiki.core.files import atomic_write

DIRECTIVES_FILE = "jit-directives.json"

# Classes (HotSpot's slash notation; ``*`` at either end of a part) whose methods C2 may
# still compile: each is on the path of every record. Everything else gets C1 only.
HOT_CLASSES = (
    "org/apache/flink/table/runtime/*",
    "org/apache/flink/table/data/*",
    "org/apache/flink/streaming/*",
    "org/apache/flink/runtime/*",
    "org/apache/flink/api/*",
    "org/apache/flink/types/*",
    "org/apache/flink/core/memory/*",
    "org/apache/flink/core/io/*",
    "org/apache/flink/core/fs/*",
    "org/apache/flink/formats/*",
    "org/apache/flink/connector/*",
    "org/apache/flink/python/*",
    "org/apache/flink/fnexecution/*",
    "org/apache/flink/shaded/jackson2/*",
    "org/apache/flink/shaded/netty4/*",
    "org/apache/flink/util/*",
    "pemja/*",
    "java/util/HashMap*",
    "java/util/LinkedHashMap*",
    "java/util/HashSet*",
    "java/util/TreeMap*",
    "java/util/ArrayList*",
    "java/util/ArrayDeque*",
    "java/util/Arrays",
    "java/util/concurrent/*",
    "java/util/regex/*",
    "java/lang/String*",
    "java/lang/Long",
    "java/lang/Integer",
    "java/lang/Math",
    "java/lang/Object",
    "java/lang/System",
    "java/lang/Thread*",
    "java/io/DataInput*",
    "java/io/DataOutput*",
    "java/io/ByteArray*",
    "java/nio/*",
    "sun/nio/*",
    "jdk/internal/misc/*",
    "jdk/internal/util/*",
    # Operators the planner generates (Janino), in the default package:
    "StreamExec*",
    "*AggsHandler*",
    "*Projection*",
    "*Condition*",
    "*Function$*",
    "*Equaliser*",
    "*RecordComparator*",
    "*HashFunction*",
)


def jit_directives() -> str:
    """HotSpot compiler directives (JSON with bare keys): C2 for :data:`HOT_CLASSES`.

    The directive listed first wins for a method that several match.
    """
    patterns = ",\n".join(f'      "{pattern}.*"' for pattern in HOT_CLASSES)
    return (
        "[\n"
        f"  {{\n    match: [\n{patterns}\n    ],\n    c2: {{ Exclude: false }}\n  }},\n"
        '  {\n    match: "*.*",\n    c2: { Exclude: true }\n  }\n'
        "]\n"
    )


def jvm_args(directory: Path) -> str:
    """``JVM_ARGS`` for PyFlink's gateway: the user's own, then the directives (written
    to ``directory``). The JVM's own messages go to stderr, which PyFlink collects,
    instead of the command's output. ``SAIKI_DEFAULT_JIT=1`` leaves the JIT as it is
    (to compare); so does a directory whose path holds a space (PyFlink splits
    ``JVM_ARGS`` on whitespace)."""
    existing = os.environ.get("JVM_ARGS", "")
    path = directory / DIRECTIVES_FILE
    if (
        os.environ.get("SAIKI_DEFAULT_JIT") == "1"
        or "CompilerDirectivesFile" in existing
        or any(c.isspace() for c in str(path))
    ):
        return existing
    directory.mkdir(parents=True, exist_ok=True)
    text = jit_directives()
    if not path.exists() or path.read_text() != text:
        atomic_write(path, text)
    ours = (
        "-XX:+UnlockDiagnosticVMOptions",
        f"-XX:CompilerDirectivesFile={path}",
        "-XX:+DisplayVMOutputToStderr",
    )
    return " ".join([existing, *ours]).strip()
