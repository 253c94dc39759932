"""Dataset sources as the API checks them, brace patterns, and prompt templates."""

from __future__ import annotations

import pytest

from janus_batch.datasets import count_braces, expand_braces, literal_prefix
from janus_batch.inputs import InvalidInput, check_source, parse_params
from janus_batch.states import JobKind
from janus_batch.templates import Template, TemplateError


def test_brace_patterns_expand_in_order_and_lazily() -> None:
    pattern = "s3://b/shards/{00008..00011}.tar"
    assert list(expand_braces(pattern)) == [
        "s3://b/shards/00008.tar",
        "s3://b/shards/00009.tar",
        "s3://b/shards/00010.tar",
        "s3://b/shards/00011.tar",
    ]
    assert list(expand_braces("s3://b/{a,b}/{1..2}.tar")) == [
        "s3://b/a/1.tar", "s3://b/a/2.tar", "s3://b/b/1.tar", "s3://b/b/2.tar"]  # fmt: skip
    huge = "s3://b/{000000..999999}/{0000..9999}.tar"
    assert count_braces(huge) == 10**10
    assert next(expand_braces(huge)) == "s3://b/000000/0000.tar"  # never materialised
    assert literal_prefix(pattern) == "s3://b/shards/"


def test_check_source_normalises_dataset_sources() -> None:
    csv = check_source({"csv": "s3://b/lists/a.csv"}, JobKind.CAPTION)
    assert csv == {"csv": ["s3://b/lists/a.csv"], "image_column": "url", "key_column": "key",
                   "prompt_column": None}  # fmt: skip
    gen = check_source({"csv": ["s3://b/p/", "file_" + "a" * 24]}, JobKind.GENERATE)
    assert gen["prompt_column"] == "prompt" and len(gen["csv"]) == 2
    wds = check_source({"webdataset": "s3://b/shards/{00000..00009}.tar"}, JobKind.CAPTION)
    assert wds == {"webdataset": ["s3://b/shards/{00000..00009}.tar"]}


@pytest.mark.parametrize(
    ("source", "kind", "field", "words"),
    [
        ({"webdataset": "https://h/x.tar"}, JobKind.CAPTION, "source.webdataset", "neither"),
        ({"webdataset": "s3://b/x.tar"}, JobKind.GENERATE, "source.webdataset", "only caption"),
        (
            {"webdataset": "s3://b/x.tar", "image_column": "u"},
            JobKind.CAPTION,
            "source.image_column",
            "image member",
        ),
        ({"csv": []}, JobKind.CAPTION, "source.csv", "non-empty list"),
        ({"csv": ["s3://b/a.csv", 3]}, JobKind.CAPTION, "source.csv[1]", "non-empty string"),
        ({"csv": "s3://b"}, JobKind.CAPTION, "source.csv", "names no object"),
        ({"csv": "s3://b/a.csv", "columns": "x"}, JobKind.CAPTION, "source.columns", "unknown"),
        ({"csv": "s3://b/{0..2000000}.csv"}, JobKind.CAPTION, "source.csv", "at most"),
        ({"csv": "s3://store/jobs/x.csv"}, JobKind.CAPTION, "source.csv", "own storage"),
        ({"csv": "s3://store/{jobs,other}/x.csv"}, JobKind.CAPTION, "source.csv", "own storage"),
        (
            {"csv": "s3://b/a.csv", "webdataset": "s3://b/x.tar"},
            JobKind.CAPTION,
            "source",
            "one of",
        ),
    ],
)
def test_bad_dataset_sources_name_their_field(
    source: dict, kind: JobKind, field: str, words: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_source(source, kind, storage_url="s3://store/jobs")
    assert caught.value.field == field
    assert words in caught.value.message


def test_templates_render_plain_fields_only() -> None:
    template = Template.parse("Alt text: {caption}. Key {__key__} {{literal}}")
    assert template.fields == ("caption", "__key__")
    assert template.render({"caption": "a dog", "__key__": "0001"}) == (
        "Alt text: a dog. Key 0001 {literal}"
    )
    assert Template.parse("{n}").render({"n": 3}) == "3"
    assert Template.parse("{n}").render({"n": None}) == ""
    with pytest.raises(TemplateError, match=r"uses \{caption\}, which this item lacks"):
        template.render({"__key__": "1"})
    for bad in ("{caption.__class__}", "{0}", "{x!r}", "{x:>10}", "{a[0]}"):
        with pytest.raises(TemplateError, match="is not a field name"):
            Template.parse(bad, "params.prompt")
    with pytest.raises(TemplateError, match=r"params\.prompt: Single .}."):
        Template.parse("oops }", "params.prompt")


def test_several_prompts_are_named_columns() -> None:
    params = parse_params(JobKind.CAPTION, {"prompts": {"short": "a", "long": "b"}}, max_n=4)
    assert params.model_dump(mode="json")["prompts"] == {"short": "a", "long": "b"}
    assert "prompt" not in params.model_dump(mode="json")
    assert "prompts" not in parse_params(JobKind.CAPTION, {}, max_n=4).model_dump(mode="json")
    for bad, words in [
        ({"prompts": {}}, "between 1 and 8"),
        ({"prompts": {"status": "x"}}, "not a prompt name"),
        ({"prompts": {"a b": "x"}}, "not a prompt name"),
        ({"prompts": {"a": " "}}, "must not be empty"),
        ({"prompts": {"a": "x"}, "prompt": "y"}, "not both"),
    ]:
        with pytest.raises(InvalidInput, match=words):
            parse_params(JobKind.CAPTION, bad, max_n=4)
