"""Every ``docs/<file>.md §<section>`` citation in the repository's code resolves to an
existing file and heading (docs/README.md says how to cite), and no code cites notes outside
the repository (``research/*.md``, ``../shared``, gotcha codes)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SUFFIXES = (".py", ".yaml", ".yml")
SKIP_DIRS = {"build", "dist", "node_modules", "__pycache__"}
CITE = re.compile(r"docs/([A-Za-z0-9_./-]+?\.md)")
#: parts of the repository whose comments were rewritten to cite docs/ (extend as others are)
IN_REPO_ONLY = ["orchestrator", "configs", "bench", "cluster.yaml", "tests/conftest.py",
                "tests/test_orchestrator_cluster.py", "tests/test_tune.py", "tests/test_mt10.py",
                "methods", "envs", "tests/method_cases.py", "tests/test_method_properties.py",
                "tests/test_methods_gradient.py", "tests/test_methods_loss.py",
                "tests/test_methods_projection.py", "tests/test_envs_architectures.py"]
#: outside files: research notes (with or without their folder), the papers' seeds, ../shared
OUTSIDE = re.compile(r"research/[a-z-]+\.md|\.\./shared|\bgotcha G\d|\(G\d\)"
                     r"|(?<![\w/])(?:methods|benchmarks|aesthetics|DESIGN)\.md\b|\bseeds/\d{3}")


def _files() -> list[Path]:
    out = []
    for p in ROOT.rglob("*"):
        rel = p.relative_to(ROOT).parts
        if p.suffix in SUFFIXES and p.is_file() and p != Path(__file__).resolve() and not any(
                part.startswith(".") or part in SKIP_DIRS or part.endswith(".egg-info")
                for part in rel):
            out.append(p)
    return sorted(out)


def headings(doc: Path) -> list[str]:
    """Each heading's ids: its leading number (``1.3`` of ``### 1.3 Title``) and its title."""
    ids = []
    for line in doc.read_text().splitlines():
        m = re.match(r"#+\s+(.*\S)", line)
        if not m:
            continue
        text = m.group(1)
        num = re.match(r"(\d+(?:\.\d+)*)\.?\s+(.*)", text)
        ids += [num.group(1), num.group(2)] if num else [text]
    return ids


def _resolves(after: str, ids: list[str]) -> bool:
    """Whether the text after a ``§`` starts with a heading id, at a word boundary."""
    for h in ids:
        if after.startswith(h):
            rest = after[len(h):]
            if not rest or not (rest[0].isalnum() or re.match(r"\.\d", rest)):
                return True
    return False


def citations(text: str) -> list[tuple[str, str | None]]:
    """(doc file, text after each ``§`` or None) for every docs/ citation in ``text``."""
    out = []
    for line in text.splitlines():
        refs = list(CITE.finditer(line))
        for i, m in enumerate(refs):
            end = refs[i + 1].start() if i + 1 < len(refs) else len(line)
            sections = [s.strip() for s in line[m.end():end].split("§")[1:]]
            out += [(m.group(1), s) for s in sections] or [(m.group(1), None)]
    return out


def test_every_docs_citation_resolves():
    bad = []
    for path in _files():
        for doc, section in citations(path.read_text(errors="replace")):
            target = DOCS / doc
            where = f"{path.relative_to(ROOT)}: docs/{doc}"
            if not target.is_file():
                bad.append(f"{where} (no such file)")
            elif section is not None and not _resolves(section, headings(target)):
                bad.append(f"{where} §{section[:40]} (no such heading)")
    assert not bad, "citations that do not resolve:\n" + "\n".join(bad)


def test_the_citation_check_catches_a_wrong_section(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("# X\n\n## 1. One\n\n### 1.2 Two\n\n## Contract\n")
    ids = headings(doc)
    assert citations("see docs/x.md §1.2, §Contract.") == [("x.md", "1.2,"), ("x.md", "Contract.")]
    assert _resolves("1.2,", ids) and _resolves("1 and more", ids) and _resolves("Contract.", ids)
    assert not _resolves("1.3", ids) and not _resolves("12", ids) and not _resolves("Contracts", ids)


def test_code_cites_nothing_outside_the_repository():
    bad = []
    for path in _files():
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "cite docs/<file>.md §<section> instead:\n" + "\n".join(bad)
