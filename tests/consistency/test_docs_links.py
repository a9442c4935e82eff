"""Every link and cited documentation path in the repository points to something that exists.

* Every relative Markdown link (``[text](target)``, images too) in a ``*.md`` file of the repository
  resolves to a file or folder, and a ``#fragment`` to a heading of the target page (GitHub's anchors).
* Every cited ``docs/...`` path in a ``*.md``, ``*.py`` or ``*.yaml`` file exists, and the section names
  quoted right after a citation of a ``docs`` page (``<page> "Heading", "Other heading"`` or
  ``<page>, "Heading"``, the convention of ``docs/reference/README.md``) are headings of that page.
* ``README.md`` is a first page: under 200 lines, its first section shows ``make test`` and ``make demo``.
* No file outside ``docs/`` cites the reference notes that were never part of the repository (the
  notes' index file or a ``reference/<name>.md`` path that is not under ``docs/``): a user could not
  follow such a citation.

Files are found by walking the repository, skipping hidden folders, caches, build outputs and run
outputs (the ``.gitignore`` entries), so the test works in a fresh clone and in an unpacked archive.
"""

import os
import re

import pytest

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOCS = "docs"

#: Folders never scanned (hidden folders such as .git and .venv are skipped too).
SKIPPED_FOLDERS = {"__pycache__", "results", "demo_output", "node_modules", "build", "dist"}

#: The old notes' names. Built from pieces so that this file does not cite them itself.
NOTES_INDEX = "REFERENCE" + ".md"
NOTES_PAGES = ("superb_tasks", "s3prl_settings", "dphubert")

MARKDOWN_LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCED_BLOCK = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$", re.M)
#: A cited documentation path: ``docs/...`` (or ``../docs/...``), not part of a longer path.
DOCS_PATH = re.compile(r"(?<![\w/.-])(?P<path>(?:\.\./)*" + DOCS + r"/[\w./-]*[\w/])")
#: A citation of a documentation page (``docs/<page>.md`` or ``docs/reference/<page>.md``) with the quoted
#: headings that follow it.
SECTION_CITATION = re.compile(
    r"(?<![\w/.-])(?:\.\./)*" + DOCS + r"/(?P<page>(?:reference/)?[\w-]+\.md)(?:#[\w-]+)?`*\)?,?"
    r"(?P<sections>(?:\s+\"[^\"\n]+\"(?:\s*,|\s+and)?)+)"
)
#: The first page's limit (issue 21: a README that is a first page, the details in docs/).
README_MAX_LINES = 200
QUOTED = re.compile(r"\"([^\"\n]+)\"")


def repository_files(*extensions):
    """Paths (relative to the repository root, ``/``-separated) of the files with these extensions."""
    found = []
    for folder, subfolders, files in os.walk(REPO_ROOT):
        subfolders[:] = sorted(
            name
            for name in subfolders
            if not name.startswith(".") and name not in SKIPPED_FOLDERS and not name.endswith(".egg-info")
        )
        for name in sorted(files):
            if name.endswith(extensions):
                found.append(os.path.relpath(os.path.join(folder, name), REPO_ROOT).replace(os.sep, "/"))
    return found


def read(relative_path):
    with open(os.path.join(REPO_ROOT, relative_path), encoding="utf-8") as handle:
        return handle.read()


def line_of(text, index):
    return text.count("\n", 0, index) + 1


def github_anchor(title):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces turned into hyphens.

    Example
    -------
    >>> github_anchor("Authors' checkpoint format")
    'authors-checkpoint-format'
    >>> github_anchor("RobustDistiller + DPWavLM choices")
    'robustdistiller--dpwavlm-choices'
    """
    title = re.sub(r"`([^`]*)`", r"\1", title.strip().lower())
    return re.sub(r"[^\w\- ]", "", title).replace(" ", "-")


def headings(relative_path):
    """The heading titles of a Markdown file (outside fenced code blocks)."""
    text = FENCED_BLOCK.sub("", read(relative_path))
    return [match.group("title") for match in HEADING.finditer(text)]


def markdown_sections(text):
    r"""``(heading, body)`` of each level-2 section of a Markdown text, the text before the first one included.

    Lines inside fenced code blocks are never headings.

    Example
    -------
    >>> markdown_sections("# Title\nIntro\n## One\n```bash\n## not a heading\n```\n## Two\nText")
    [('', '# Title\nIntro'), ('One', '```bash\n## not a heading\n```'), ('Two', 'Text')]
    """
    sections, in_fence = [("", [])], False
    for line in text.splitlines():
        if line.startswith(("```", "~~~")):
            in_fence = not in_fence
        if not in_fence and line.startswith("## "):
            sections.append((line[3:].strip(), []))
            continue
        sections[-1][1].append(line)
    return [(title, "\n".join(body)) for title, body in sections]


def without_code(text):
    """Markdown text with fenced blocks and inline code blanked (line numbers kept)."""
    text = FENCED_BLOCK.sub(lambda match: "\n" * match.group(0).count("\n"), text)
    return INLINE_CODE.sub(lambda match: " " * len(match.group(0)), text)


MARKDOWN_FILES = repository_files(".md")
CITING_FILES = repository_files(".md", ".py", ".yaml", ".yml")


def test_the_repository_has_reference_pages():
    """The scan is not vacuous: the reference pages and their index are found."""
    assert "docs/reference/README.md" in MARKDOWN_FILES
    assert len([path for path in MARKDOWN_FILES if path.startswith(DOCS + "/reference/")]) >= 5
    assert "README.md" in MARKDOWN_FILES


@pytest.mark.parametrize("markdown_file", MARKDOWN_FILES)
def test_relative_markdown_links_exist(markdown_file):
    text = without_code(read(markdown_file))
    folder = os.path.dirname(os.path.join(REPO_ROOT, markdown_file))
    broken = []
    for match in MARKDOWN_LINK.finditer(text):
        target = match.group("target")
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path, _, fragment = target.partition("#")
        resolved = os.path.normpath(os.path.join(folder, path)) if path else os.path.join(REPO_ROOT, markdown_file)
        where = f"{markdown_file}:{line_of(text, match.start())}: ({target})"
        if not os.path.exists(resolved):
            broken.append(f"{where}: {os.path.relpath(resolved, REPO_ROOT)} does not exist")
            continue
        if fragment and resolved.endswith(".md"):
            anchors = {github_anchor(title) for title in headings(os.path.relpath(resolved, REPO_ROOT))}
            if fragment not in anchors:
                broken.append(f"{where}: no heading with anchor #{fragment} in {os.path.relpath(resolved, REPO_ROOT)}")
    assert not broken, "Broken relative links:\n" + "\n".join(broken)


@pytest.mark.parametrize("citing_file", CITING_FILES)
def test_cited_docs_paths_exist(citing_file):
    text = read(citing_file)
    folder = os.path.dirname(os.path.join(REPO_ROOT, citing_file))
    missing = []
    for match in DOCS_PATH.finditer(text):
        path = match.group("path").rstrip(".")
        base = folder if path.startswith("../") else REPO_ROOT
        if not os.path.exists(os.path.normpath(os.path.join(base, path))):
            missing.append(f"{citing_file}:{line_of(text, match.start())}: {path}")
    assert not missing, "Cited documentation paths that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("citing_file", CITING_FILES)
def test_cited_reference_sections_exist(citing_file):
    text = read(citing_file)
    unknown = []
    for match in SECTION_CITATION.finditer(text):
        page = match.group("page")
        page_path = os.path.join(REPO_ROOT, DOCS, page)
        if not os.path.isfile(page_path):
            continue  # reported by test_cited_docs_paths_exist
        titles = {" ".join(title.split()) for title in headings(os.path.relpath(page_path, REPO_ROOT))}
        for quoted in QUOTED.findall(match.group("sections")):
            if " ".join(quoted.split()) not in titles:
                unknown.append(
                    f"{citing_file}:{line_of(text, match.start())}: {DOCS}/{page} has no heading "
                    f"{quoted!r} (headings: {sorted(titles)})"
                )
    assert not unknown, "Cited sections that are not headings of the cited page:\n" + "\n".join(unknown)


def test_no_file_outside_docs_cites_the_old_notes():
    """The notes' index, ``reference/<page>.md`` outside ``docs/`` and the notes' bare page names are gone.

    A bare page name counts as a citation unless it is the text of a Markdown link (``[page.md](...)``)
    or is preceded by ``reference/`` under ``docs/``.
    """
    notes_path = re.compile(r"(?<![\w-])(?P<prefix>[\w./-]*/)?reference/[\w-]+\.md")
    bare_page = re.compile(r"(?<![\w/-])(?:" + "|".join(NOTES_PAGES) + r")\.md(?!\]\()")
    offending = []
    for citing_file in repository_files(".md", ".py", ".yaml", ".yml", ".txt", ".toml", ".cfg", "Makefile"):
        if citing_file.startswith(DOCS + "/"):
            continue
        for number, line in enumerate(read(citing_file).splitlines(), start=1):
            found = [NOTES_INDEX] if NOTES_INDEX in line else []
            found += [
                match.group(0)
                for match in notes_path.finditer(line)
                if not (match.group("prefix") or "").endswith(DOCS + "/")
            ]
            found += [match.group(0) for match in bare_page.finditer(line)]
            if found:
                offending.append(f"{citing_file}:{number}: {', '.join(found)}: {line.strip()}")
    assert not offending, (
        'Citations of notes that are not in the repository (cite docs/reference/<page>.md "Section" instead):\n'
        + "\n".join(offending)
    )


def test_license_and_citation_files():
    """LICENSE is the Apache License 2.0 and CITATION.cff names the paper as its preferred citation."""
    licence = read("LICENSE")
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence
    yaml = pytest.importorskip("yaml")
    citation = yaml.safe_load(read("CITATION.cff"))
    assert citation["cff-version"] == "1.2.0"
    assert citation["license"] == "Apache-2.0"
    preferred = citation["preferred-citation"]
    assert preferred["title"].startswith("RobustDistiller: Compressing Universal Speech Representations")
    assert [author["family-names"] for author in preferred["authors"]] == [
        "Guimarães",
        "Pimentel",
        "Avila",
        "Rezagholizadeh",
        "Chen",
        "Falk",
    ]


def test_readme_is_a_first_page():
    """README.md stays short, and its first section gives the two commands that set everything up."""
    text = read("README.md")
    assert len(text.splitlines()) < README_MAX_LINES, (
        f"README.md has {len(text.splitlines())} lines; keep it under {README_MAX_LINES} and move details to docs/"
    )
    sections = markdown_sections(text)
    assert len(sections) > 2, "README.md has no sections"
    title, body = sections[1]
    for command in ("make test", "make demo"):
        assert command in body, f"the first section of README.md ({title!r}) does not show `{command}`"


def test_docs_pages_are_linked_from_the_readme():
    """Every page of docs/ (outside docs/reference, which its own index lists) is reachable from README.md."""
    readme = read("README.md")
    pages = [path for path in MARKDOWN_FILES if path.startswith(DOCS + "/") and path.count("/") == 1]
    assert pages, "no documentation pages found"
    unlinked = [path for path in pages if f"]({path})" not in readme]
    assert not unlinked, f"pages of docs/ not linked from README.md: {unlinked}"
