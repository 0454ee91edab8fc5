"""Item text templates: fixed field order per kind, empty fields left out, lists joined, UTF-8 kept."""
import pytest

from recbase.data.templates import TEMPLATES, clean_value, render


def test_field_order_is_the_templates_whatever_the_input_order():
    a = render("movie", {"genres": ["Comedy", "Drama"], "title": "Amélie (2001)"})
    b = render("movie", {"title": "Amélie (2001)", "genres": ["Comedy", "Drama"]})
    assert a == b == 'Describe a movie:\n{"title": "Amélie (2001)", "genres": "Comedy | Drama"}'


def test_empty_fields_are_left_out():
    text = render("product", {"title": "Mug", "brand": "", "price": None, "features": [], "description": "  "})
    assert text == 'Describe a product:\n{"title": "Mug"}'


def test_unknown_fields_follow_known_ones():
    assert render("news", {"source": "AP", "title": "T"}) == 'Describe a news article:\n{"title": "T", "source": "AP"}'


def test_values_are_cleaned():
    assert clean_value(float("nan")) is None
    assert clean_value(3.0) == "3" and clean_value(2.5) == "2.5"
    assert clean_value(["a", None, ["b", ""]]) == "a | b"
    assert clean_value("two\n lines\t") == "two lines"
    assert clean_value({"nested": 1}) is None


def test_every_kind_has_a_prompt_and_unknown_kind_is_an_error():
    assert {"movie", "product", "book", "game", "news", "business", "article"} <= set(TEMPLATES)
    for kind in TEMPLATES:
        assert render(kind, {"title": "x"}).startswith("Describe ")
    with pytest.raises(ValueError, match="unknown template kind 'film'"):
        render("film", {"title": "x"})
