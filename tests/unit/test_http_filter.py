"""The ``filter=`` language on its own (``corral.server.http_filter``): dicts in,
booleans out, no server.

tests/unit/test_services.py keeps the first table of go-bexpr expressions (through
``http_api``'s re-export); these are what it does not show: precedence, typed
comparisons, selectors, strings, and that every error is found when the filter is
compiled, never while it is evaluated.
"""

from __future__ import annotations

from typing import Any

import pytest

from corral.server.http_filter import FilterError, compile_filter
from corral.server.http_router import HTTPError

INSTANCE: dict[str, Any] = {
    "ServiceName": "web",
    "Tags": ["traefik.enable=true", "v1"],
    "Port": 8080,
    "Enabled": True,
    "Weight": None,
    "Meta": {"team": "shop", "say": 'say "hi"'},
}


def holds(expr: str, data: dict[str, Any] = INSTANCE) -> bool:
    return compile_filter(expr)(data)


def test_not_binds_tighter_than_and_which_binds_tighter_than_or() -> None:
    assert holds('ServiceName == "api" and Port == 8080 or "v1" in Tags')
    assert not holds('ServiceName == "api" and (Port == 8080 or "v1" in Tags)')
    assert not holds('not ServiceName == "api" and Port == 8081')
    assert holds('not (ServiceName == "api" and Port == 8081)')
    assert holds('"traefik.enable=true" in Tags and not "v2" in Tags')


def test_values_compare_by_the_fields_type() -> None:
    assert holds("Port == 8080") and holds("Port == 8080.0") and holds('Port == "8080"')
    assert not holds("Port == 80x")
    assert holds("Enabled == true") and holds("Enabled == TRUE") and not holds("Enabled == false")
    assert not holds("Tags == v1")  # a list equals nothing; `contains` asks it


def test_selectors_are_dotted_and_fall_back_to_any_case() -> None:
    assert holds("Meta.team == shop") and holds("Meta.team contains sho")
    assert holds("Meta contains team")  # a map contains its keys
    assert holds("servicename == web") and holds("SERVICENAME == web")
    assert not holds("Missing == x") and not holds("Meta.team.deeper == x")
    assert holds("Missing is empty") and holds("Weight is empty")
    assert holds("Tags is not empty")


def test_matches_searches_strings_and_list_items() -> None:
    assert holds(r'Tags matches "^traefik\\."')
    assert holds('Tags not matches "^x"')
    assert holds("ServiceName matches `^w.b$`")  # raw strings need no escaping
    assert not holds('Port matches "80"')  # numbers are not searched


def test_strings_take_json_escapes() -> None:
    assert holds(r'Meta.say == "say \"hi\""')
    assert holds('Meta.say == `say "hi"`')


def test_one_compiled_filter_serves_many_instances() -> None:
    pred = compile_filter('Tags contains "traefik.enable=true"')
    found = [
        {"ID": i, "Tags": tags}
        for i, tags in enumerate(
            [["traefik.enable=true"], ["internal"], [], ["traefik.enable=true"]]
        )
    ]
    assert [d["ID"] for d in found if pred(d)] == [0, 3]
    assert compile_filter("   ")(INSTANCE) and compile_filter("")({})


@pytest.mark.parametrize(
    ("expr", "why"),
    [
        ('Tags contains "x" and', "unexpected end of expression"),
        ("ServiceName ==", "unexpected end of expression"),
        ("(Port == 1", "missing )"),
        ("Port == 1)", "unexpected ')'"),
        ("Port = 1", "at column 5"),
        ('Port matches "("', "invalid regular expression"),
        ("and", "expected a selector"),
        ("Tags is full", "expected 'empty'"),
        ('"x" Tags', "expected 'in'"),
        ('"unterminated', "at column 1"),
    ],
)
def test_errors_are_found_at_compile_time_as_400s(expr: str, why: str) -> None:
    with pytest.raises(FilterError) as err:
        compile_filter(expr)
    assert isinstance(err.value, HTTPError) and err.value.status == 400
    assert str(err.value).startswith("failed to read filter expression: ")
    assert why in str(err.value)
