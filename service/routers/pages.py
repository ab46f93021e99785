"""The web pages: one shared template (header, navigation, API-key field) around each
page's own ``<main>`` content, plus the static files (JS, CSS) under ``/static``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Template

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Page:
    """One page: its path, ``data-page`` name (read by ``app.js``), title and scripts.

    A list page's template holds its heading and its own form controls (after a
    ``<!-- controls -->`` line); ``list.html`` adds the filters, pager and table.
    """

    path: str
    name: str
    nav_label: str
    title: str
    scripts: tuple[str, ...] = ("app.js",)
    is_list: bool = True


PAGES = (
    Page("/", "search", "Search", "find similar stars", ("plot.js", "app.js"), is_list=False),
    Page("/anomalies", "anomalies", "Anomalies", "Anomaly candidates"),
    Page("/metal-poor", "metal-poor", "Metal-poor", "Metal-poor candidates"),
)
CONTROLS = "<!-- controls -->\n"
NAV_EXTRA = (("/docs", "API"),)


def static_dir() -> Path:
    """The pages' JS and CSS (inside the installed ``service`` package)."""
    return Path(__file__).resolve().parents[1] / "static"


def templates_dir() -> Path:
    """``base.html`` (the shared shell) and one ``<name>.html`` (main content) a page."""
    return Path(__file__).resolve().parents[1] / "templates"


@cache
def render(page: Page) -> str:
    """The page's HTML: ``base.html`` with the page's content, nav and scripts."""
    links = [(p.path, p.nav_label) for p in PAGES] + list(NAV_EXTRA)
    nav = "\n".join(f'    <a href="{href}"' + (' class="active"' if href == page.path else "")
                    + f">{label}</a>" for href, label in links)
    scripts = "\n".join(f'<script src="/static/{s}"></script>' for s in page.scripts)
    base = Template(_template("base"))
    main = _template(page.name)
    if page.is_list:
        intro, _, controls = main.partition(CONTROLS)
        main = Template(_template("list")).substitute(intro=intro.rstrip("\n"),
                                                      controls=controls.rstrip("\n"))
    return base.substitute(title=page.title, page=page.name, nav=nav, main=main,
                           scripts=scripts)


def _template(name: str) -> str:
    return (templates_dir() / f"{name}.html").read_text(encoding="utf-8")


def _endpoint(page: Page):
    async def serve() -> HTMLResponse:
        return HTMLResponse(render(page))
    serve.__name__ = f"page_{page.name.replace('-', '_')}"
    return serve


for _page in PAGES:
    router.add_api_route(_page.path, _endpoint(_page), methods=["GET"])
