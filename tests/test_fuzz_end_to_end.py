"""Random answers over a real socket: every request ends with a completion or an LLMError, in bounded time."""

from __future__ import annotations

import json
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aicoder.config import Config
from aicoder.http.waiting import instant_waits
from aicoder.llm.api_client import LLMClient
from aicoder.llm.errors import LLMError
from tests.servers import Reply, completion, scripted_server

REQUEST_TIMEOUT = 0.5
RETRIES = 2

_header_names = st.sampled_from(
    [
        "Retry-After",
        "retry-after-ms",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "X-RateLimit-Reset",
        "X-RateLimit-Remaining",
        "anthropic-ratelimit-requests-reset",
        "RateLimit",
        "RateLimit-Policy",
        "Content-Type",
    ]
)
# What a header can carry on the wire: latin-1, no line breaks.
_header_values = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=30),
    st.integers(min_value=-(10**15), max_value=10**15).map(str),
    st.sampled_from(["0", "1", "0.05", "1e9", "9" * 40, "20ms", "6m0s", '"q";r=0;t=1', "2027-01-15T08:00:01Z"]),
)
_bodies = st.one_of(
    st.just(completion("fuzzed").body),
    st.binary(max_size=300),
    st.sampled_from([b"", b"{}", b"[]", b"null", b"[" * 5000, b'{"error": {"message": "Please try again in 20ms"}}']),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(
                st.sampled_from(["choices", "message", "content", "error", "details"]), children, max_size=3
            ),
        ),
        max_leaves=10,
    ).map(lambda data: json.dumps(data).encode()),
)
_replies = st.builds(
    Reply,
    status=st.sampled_from([200, 201, 204, 400, 401, 404, 408, 409, 413, 429, 429, 429, 500, 503, 599, 999]),
    body=_bodies,
    headers=st.dictionaries(_header_names, _header_values, max_size=4),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(_replies, min_size=1, max_size=3), provider=st.sampled_from(["openrouter", "openai"]))
def test_every_request_ends_in_a_completion_or_an_llm_error(script: list[Reply], provider: str) -> None:
    """Whatever the server answers, a request returns text or raises LLMError, within its deadlines."""
    with scripted_server(*script) as server:
        config = Config(
            retry_count=RETRIES,
            request_timeout=REQUEST_TIMEOUT,
            openrouter_api_key="sk-fuzz-key",
            openrouter_base_url=f"{server.url}/v1",
            openai_api_key="sk-fuzz-key",
            openai_base_url=f"{server.url}/v1",
        )
        started = time.monotonic()
        with instant_waits():
            try:
                answer = LLMClient(f"{provider}/m", config=config).sendRequest("s", "u", verbose=False)
            except LLMError as error:
                assert str(error)
                assert "sk-fuzz-key" not in str(error)
            else:
                assert isinstance(answer, str)
        assert time.monotonic() - started < (RETRIES + 1) * REQUEST_TIMEOUT + 2
