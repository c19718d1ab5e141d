"""seam/auth.py: the one Airflow-version switch of the auth layer, ``get_user``'s token parameter."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from airflow.api_fastapi.core_api.security import get_user

from airflow_hitl.seam.auth import oauth_token_param


async def _get_user_3_1(request: Any, oauth_token: Any = None, bearer_credentials: Any = None) -> None:
    """The signature of Airflow 3.1 and 3.2."""


async def _get_user_3_3(request: Any, _oauth_token: Any = None, bearer_credentials: Any = None) -> None:
    """The signature of Airflow 3.3."""


class TestOauthTokenParam:
    @pytest.mark.parametrize(
        ("func", "name"), [(_get_user_3_1, "oauth_token"), (_get_user_3_3, "_oauth_token")], ids=["3.1-3.2", "3.3"]
    )
    def test_each_signature(self, func: Any, name: str) -> None:
        assert oauth_token_param(func) == name

    def test_the_installed_airflow_accepts_the_chosen_name(self) -> None:
        assert oauth_token_param(get_user) in inspect.signature(get_user).parameters
