"""The manual holds together: every relative link of the README and docs/ reaches a file (and a heading, for an
anchor), every docs page a docstring or comment cites exists, and nothing cites files a user's clone lacks."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
CITED_DOC = re.compile(r'docs/[\w/.-]+\.md(?:#[\w-]+)?')


def heading_anchors(page):
    """GitHub's anchors of a Markdown page: lower-cased heading text, punctuation dropped, spaces to hyphens,
    ``-1``, ``-2`` ... for repeats. Headings inside code fences do not count."""
    anchors, seen, fenced = set(), {}, False
    for line in page.read_text(encoding='utf-8').splitlines():
        if line.startswith('```'):
            fenced = not fenced
        match = None if fenced else re.match(r'^#{1,6}\s+(.*)$', line)
        if match:
            slug = re.sub(r'[^\w\- ]', '', match.group(1).strip().lower()).replace(' ', '-')
            anchors.add(slug if slug not in seen else f'{slug}-{seen[slug]}')
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def resolve(source, target):
    """(file, anchor) a link of ``source`` points at; None for web links."""
    if re.match(r'^[a-z]+://|^mailto:', target):
        return None
    path, _, anchor = target.partition('#')
    return (source if not path else (source.parent / path).resolve()), anchor


def test_the_manual_has_the_pages_the_readme_promises():
    names = {p.name for p in PAGES}
    for page in ('method.md', 'workflow.md', 'data.md', 'bit_budget.md', 'own_networks.md', 'deployment.md',
                 'distributed_and_gpus.md', 'reliability.md', 'results.md', 'differences.md'):
        assert page in names


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.name)
def test_every_relative_link_reaches_a_file_and_heading(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding='utf-8')):
        resolved = resolve(page, target)
        if resolved is None:
            continue
        path, anchor = resolved
        if not path.exists():
            broken.append(f'{target}: no such file')
        elif anchor and path.suffix == '.md' and anchor not in heading_anchors(path):
            broken.append(f'{target}: no heading with anchor #{anchor} in {path.name}')
    assert not broken, f'{page.name}: ' + '; '.join(broken)


def test_docs_paths_cited_in_the_code_exist():
    broken = []
    for source in sorted((ROOT / 'cadyq_plugin').rglob('*.py')) + sorted((ROOT / 'scripts').glob('*')):
        if source.is_dir():
            continue
        for cited in CITED_DOC.findall(source.read_text(encoding='utf-8', errors='replace')):
            path, _, anchor = cited.partition('#')
            if not (ROOT / path).exists():
                broken.append(f'{source.relative_to(ROOT)}: {cited} (no such page)')
            elif anchor and anchor not in heading_anchors(ROOT / path):
                broken.append(f'{source.relative_to(ROOT)}: {cited} (no such heading)')
    assert not broken, '\n'.join(broken)


def test_the_code_cites_a_page_for_what_cadyq_computes():
    """The quant core's docstrings send readers to the method page (the check above makes those links real)."""
    cited = ''.join(p.read_text(encoding='utf-8') for p in (ROOT / 'cadyq_plugin' / 'quant').glob('*.py'))
    assert 'docs/method.md#quantizers' in cited and 'docs/method.md#bit-selector' in cited


def test_nothing_cites_files_outside_the_repository():
    """A clone has no specification or design file beside it: the project describes itself in docs/."""
    beside = 'sha' + 'red'  # the folder beside the checkout, spelt in parts so this file does not cite it
    outside = re.compile(rf'SPEC\.md|SPEC §|DESIGN\.md|\.\./{beside}|{beside}/reference')
    offenders = []
    for source in [*PAGES, *(ROOT / 'cadyq_plugin').rglob('*.py'), *(ROOT / 'tests').glob('*.py'),
                   *(ROOT / 'options').glob('*.yml')]:
        if source.name == Path(__file__).name:
            continue
        for number, line in enumerate(source.read_text(encoding='utf-8').splitlines(), 1):
            if outside.search(line):
                offenders.append(f'{source.relative_to(ROOT)}:{number}: {line.strip()[:80]}')
    assert not offenders, '\n'.join(offenders)
