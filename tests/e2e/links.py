"""Following an emailed approval link the way a browser does, for the end-to-end suites."""

from __future__ import annotations

import re
from urllib.parse import urljoin

import httpx

#: An emailed link as it appears in a notice's plain-text part (the token is a query value).
LINK = r"(/hitl/links\?token=[\w\-]+\.[\w\-]+)"


def find_links(base_url: str, text: str) -> list[str]:
    """The paths of every approval link under ``base_url`` in ``text``."""
    return re.findall(re.escape(base_url) + LINK, text)


def submit_link(browser: httpx.Client, link: str, **fields: str) -> tuple[httpx.Response, httpx.Response]:
    """Open ``link`` (the confirmation page, which decides nothing), then submit its form.

    The form posts the token in the body, never in the URL. Returns (page, result).
    """
    page = browser.get(link)
    action = re.search(r'<form method="post" action="([^"]*)">', page.text)
    token = re.search(r'<input type="hidden" name="token" value="([^"]+)">', page.text)
    if page.status_code != 200 or not action or not token:
        raise AssertionError(f"no decision form at {link}: {page.status_code} {page.text[:2000]}")
    result = browser.post(urljoin(str(page.url), action.group(1)), data={"token": token.group(1), **fields})
    return page, result
