"""Write corpus.jsonl: prose from the Python standard library's docstrings -- each module's
opening paragraphs and its public classes' and functions' summaries -- (Python Software
Foundation License), one passage per line, for the embeddings example.

The docstrings are read from the sources with ``ast`` (nothing is imported). The shipped
corpus.jsonl was written by Python 3.11; another version writes a slightly different corpus.

    python examples/embeddings/make_corpus.py
"""

from __future__ import annotations

import ast
import json
import os
import sys
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))
MIN_WORDS, MAX_WORDS, MAX_PER_MODULE = 6, 220, 8


def module_files(stdlib: str) -> list[tuple[str, str]]:
    """(module name, source path) of the public pure-Python standard library modules."""
    out = []
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in ("this", "antigravity", "idlelib", "turtledemo"):
            continue
        for path in (os.path.join(stdlib, f"{name}.py"), os.path.join(stdlib, name, "__init__.py")):
            if os.path.isfile(path):
                out.append((name, path))
                break
    return out


def prose(text: str) -> bool:
    """Sentences, not code, tables or lists."""
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return (
        MIN_WORDS <= len(text.split()) <= MAX_WORDS
        and letters / len(text) > 0.9
        and not text.endswith("::")
    )


def paragraphs(doc: str) -> list[str]:
    """The docstring's paragraphs, whitespace folded."""
    out = []
    for para in doc.split("\n\n"):
        lines = [line.strip() for line in para.strip().splitlines()]
        if lines and not any(line.startswith((">>>", "-", "*", "|", "+", "$")) for line in lines):
            out.append(" ".join(lines))
    return out


def passages(tree: ast.Module) -> list[str]:
    """The module's opening paragraphs, then the summaries of its public classes and functions."""
    out = [p for p in paragraphs(ast.get_docstring(tree) or "")[:3] if prose(p)]
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and not node.name.startswith("_"):
            first = paragraphs(ast.get_docstring(node) or "")[:1]
            if first and prose(first[0]):
                out.append(first[0])
    return out[:MAX_PER_MODULE]


def main() -> None:
    stdlib = sysconfig.get_paths()["stdlib"]
    records = []
    for name, path in module_files(stdlib):
        with open(path, encoding="utf-8", errors="replace") as f:
            try:
                tree = ast.parse(f.read())
            except SyntaxError:
                continue
        for i, text in enumerate(passages(tree)):
            records.append({"id": f"{name}-{i}", "text": text, "metadata": {"module": name}})
    target = os.path.join(HERE, "corpus.jsonl")
    with open(target, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(
        f"wrote {len(records)} passages from {len({r['metadata']['module'] for r in records})} "
        f"modules to {target}"
    )


if __name__ == "__main__":
    main()
