"""The documentation holds together: every relative link resolves (anchors included), and the
reference tables name everything the code can answer with (reason codes, health services,
metrics, alerts)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.app.server import CALENDAR_HEALTH, SERVICE_NAMES
from gateway.service.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "deploy" / "README.md")

_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"`[^`]*`")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks, inline code removed."""
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            yield number, _INLINE_CODE.sub("", line)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = _INLINE_CODE.sub(lambda m: m.group(0)[1:-1], heading).strip().lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor of a Markdown document's headings, numbered as GitHub numbers repeats."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(doc: Path, root: Path) -> list[str]:
    """Relative links of `doc` whose file, or whose #anchor in a Markdown file, does not exist."""
    text = doc.read_text(encoding="utf-8")
    problems = []
    for number, line in _prose(text):
        for target in _LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            where = f"{doc.relative_to(root)}:{number}: {target}"
            resolved = (doc.parent / path_part).resolve() if path_part else doc
            if root not in (resolved, *resolved.parents):
                problems.append(f"{where} (outside the repository)")
                continue
            if not resolved.exists():
                problems.append(f"{where} (no such file)")
                continue
            if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text(encoding="utf-8")):
                problems.append(f"{where} (no such heading)")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    assert broken_links(doc, ROOT) == []


def test_the_documents_exist_and_the_readme_stays_a_front_door() -> None:
    names = {p.name for p in DOCS}
    assert {"integrating.md", "operating.md", "architecture.md", "performance.md"} <= names
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


@pytest.mark.parametrize(("text", "problem"), [
    ("[a](missing.md)", "no such file"),
    ("[a](#nowhere)", "no such heading"),
    ("[a](other.md#nowhere)", "no such heading"),
    ("[a](../../outside.md)", "outside the repository"),
    ("see [the `x` part](other.md#not-here).", "no such heading"),
])
def test_the_link_check_finds_broken_links(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "other.md").write_text("# Other\n## A part\n", encoding="utf-8")
    doc = tmp_path / "sub" / "doc.md"
    doc.write_text(f"# Title\n\n{text}\n", encoding="utf-8")
    found = broken_links(doc, tmp_path)
    assert len(found) == 1 and problem in found[0]


def test_the_link_check_accepts_good_links_and_ignores_code(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n## A part, with `code`\n## A part, with `code`\n", encoding="utf-8")
    doc = tmp_path / "doc.md"
    doc.write_text("# Title: 中文 too\n[a](other.md#a-part-with-code-1) [b](#title-中文-too) [c](other.md)\n"
                   "[web](https://example.org/x) `[not](a-link.md)`\n```\n[not](a-link.md)\n```\n",
                   encoding="utf-8")
    assert broken_links(doc, tmp_path) == []


def _reason_codes() -> set[str]:
    """Every ErrorInfo reason the gateway can answer with, read from its source."""
    codes: set[str] = set()
    for source in (ROOT / "gateway").rglob("*.py"):
        if "devtools" in source.parts:
            continue
        text = source.read_text(encoding="utf-8")
        codes |= set(re.findall(r'\breason(?:: str)?\s*=\s*"([A-Z][A-Z_]+)"', text))
        codes |= set(re.findall(r'_violation\(\s*"([A-Z][A-Z_]+)"', text))
    return codes


def test_every_reason_code_is_in_the_integration_guide() -> None:
    guide = (ROOT / "docs" / "integrating.md").read_text(encoding="utf-8")
    codes = _reason_codes()
    assert {"FIELD_INVALID", "MESSAGE_ID_REUSED", "STORE_UNAVAILABLE", "CASE_CLOSED"} <= codes
    assert sorted(code for code in codes if f"`{code}`" not in guide) == []


def test_every_health_service_name_is_in_the_integration_guide() -> None:
    guide = (ROOT / "docs" / "integrating.md").read_text(encoding="utf-8")
    assert [name for name in (*SERVICE_NAMES, CALENDAR_HEALTH) if f"`{name}`" not in guide] == []


def test_every_metric_is_in_the_operators_guide() -> None:
    guide = (ROOT / "docs" / "operating.md").read_text(encoding="utf-8")
    registry = CollectorRegistry()
    Metrics(registry)
    names = {metric.name for metric in registry.collect()}
    assert len(names) > 15
    assert sorted(name for name in names if name not in guide) == []


def test_every_alert_has_a_runbook_in_the_operators_guide() -> None:
    guide = (ROOT / "docs" / "operating.md").read_text(encoding="utf-8")
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules" / "transfer-gateway.yml").read_text())
    alerts = [rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert len(alerts) >= 8
    assert [alert for alert in alerts if f"\n### {alert}\n" not in guide] == []
