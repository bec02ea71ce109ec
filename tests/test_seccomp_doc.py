"""docs/filters.md carries a section generated from the filter data."""

from __future__ import annotations

from pathlib import Path

from stockade import cli
from stockade.linux import seccomp_doc

DOC = Path(__file__).resolve().parent.parent / "docs" / "filters.md"


def test_generated_section_of_filters_md_is_current():
    text = DOC.read_text(encoding="utf-8")
    start = text.index(seccomp_doc.BEGIN)
    end = text.index(seccomp_doc.END) + len(seccomp_doc.END) + 1
    assert text[start:end] == seccomp_doc.render_markdown(), (
        "docs/filters.md is stale: run `stockade filters doc --write docs/filters.md`"
    )


def test_doc_command_rewrites_only_the_generated_section(tmp_path, capsys):
    page = tmp_path / "page.md"
    stale = f"{seccomp_doc.BEGIN}\nSTALE-CONTENT\n{seccomp_doc.END}"
    page.write_text(f"# Title\n\nprose\n\n{stale}\n\nmore\n")
    assert cli.main(["filters", "doc", "--write", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Title\n\nprose\n\n") and text.endswith("\nmore\n")
    assert "STALE-CONTENT" not in text and "| strict | moderate | permissive |" in text

    assert cli.main(["filters", "doc"]) == 0
    assert capsys.readouterr().out == seccomp_doc.render_markdown()


def test_doc_command_refuses_a_page_without_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# no markers\n")
    assert cli.main(["filters", "doc", "--write", str(page)]) == 1
