"""ADD <url> downloads, against a real HTTP server on 127.0.0.1 started by each test.

Nothing here reaches any other network: "offline" is a port on 127.0.0.1 that nobody listens
on, and a timeout is a local handler that answers too late.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

import pytest

from memobuild.build.fetch import DEFAULT_FILENAME, Fetcher, parse_checksum
from memobuild.errors import CASIntegrityError, InvalidDigestError, NetworkError

BODY = b"hello from the server\n" * 100
LAST_MODIFIED = 1_500_000_000


@dataclass
class Route:
    status: int = 200
    body: bytes = BODY
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    fail_first: int = 0  # answer 503 this many times first
    truncate: int | None = None  # send only this many bytes of the body


@dataclass
class Server:
    url: str
    routes: dict[str, Route]
    hits: dict[str, int]


@pytest.fixture
def server() -> Iterator[Server]:
    routes: dict[str, Route] = {}
    hits: dict[str, int] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path
            hits[path] = hits.get(path, 0) + 1
            route = routes.get(path)
            if route is None:
                self.send_error(404, "Not Found")
                return
            if hits[path] <= route.fail_first:
                self.send_error(503, "Service Unavailable")
                return
            time.sleep(route.delay)
            self.send_response(route.status)
            for key, value in route.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            body = route.body if route.truncate is None else route.body[: route.truncate]
            self.wfile.write(body)
            self.wfile.flush()
            if route.truncate is not None:
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", routes, hits)
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def fetcher(tmp_path: Path) -> Iterator[Fetcher]:
    with Fetcher(tmp_path / "downloads", timeout=5, attempts=1) as f:
        (tmp_path / "downloads").mkdir()
        yield f


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sha(algorithm: str, data: bytes) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


# --- downloads --------------------------------------------------------------------------------


def test_a_download_is_named_after_the_url_and_dated_by_last_modified(
    server: Server, fetcher: Fetcher
) -> None:
    server.routes["/files/tool-1.2.tar.gz"] = Route(
        headers={"Last-Modified": formatdate(LAST_MODIFIED, usegmt=True)}
    )
    got = fetcher.fetch(server.url + "/files/tool-1.2.tar.gz")
    assert got.path.read_bytes() == BODY
    assert got.path.parent == fetcher.directory
    assert got.filename == "tool-1.2.tar.gz"
    assert got.last_modified == LAST_MODIFIED
    assert got.digest == sha("sha256", BODY)
    assert got.size == len(BODY)


def test_a_url_without_a_file_name_uses_content_disposition(
    server: Server, fetcher: Fetcher
) -> None:
    server.routes["/download/"] = Route(
        headers={"Content-Disposition": 'attachment; filename="report.csv"'}
    )
    server.routes["/export/"] = Route(
        headers={"Content-Disposition": "attachment; filename*=UTF-8''na%C3%AFve.txt"}
    )
    server.routes["/sneaky/"] = Route(
        headers={"Content-Disposition": 'attachment; filename="../../etc/passwd"'}
    )
    server.routes["/plain/"] = Route()
    assert fetcher.fetch(server.url + "/download/").filename == "report.csv"
    assert fetcher.fetch(server.url + "/export/").filename == "naïve.txt"
    assert fetcher.fetch(server.url + "/sneaky/").filename == "passwd"
    got = fetcher.fetch(server.url + "/plain/")
    assert got.filename == DEFAULT_FILENAME
    assert got.last_modified is None


def test_the_url_path_wins_over_content_disposition_and_is_unquoted(
    server: Server, fetcher: Fetcher
) -> None:
    server.routes["/a%20b.txt"] = Route(
        headers={"Content-Disposition": 'attachment; filename="other.txt"'}
    )
    assert fetcher.fetch(server.url + "/a%20b.txt").filename == "a b.txt"


def test_each_url_is_downloaded_once_per_fetcher(server: Server, fetcher: Fetcher) -> None:
    server.routes["/once.txt"] = Route()
    first = fetcher.fetch(server.url + "/once.txt")
    second = fetcher.fetch(server.url + "/once.txt", checksum=sha("sha256", BODY))
    assert first == second
    assert server.hits["/once.txt"] == 1


def test_redirects_are_followed_to_http_only(server: Server, fetcher: Fetcher) -> None:
    server.routes["/real.txt"] = Route()
    server.routes["/moved"] = Route(status=302, body=b"", headers={"Location": "/real.txt"})
    server.routes["/to-file"] = Route(
        status=302, body=b"", headers={"Location": "file:///etc/passwd"}
    )
    server.routes["/to-ftp"] = Route(
        status=302, body=b"", headers={"Location": "ftp://127.0.0.1/pub/x"}
    )
    assert fetcher.fetch(server.url + "/moved").path.read_bytes() == BODY
    with pytest.raises(NetworkError, match="not allowed"):
        fetcher.fetch(server.url + "/to-file")
    with pytest.raises(NetworkError, match="non-HTTP URL 'ftp://"):
        fetcher.fetch(server.url + "/to-ftp")
    assert list(fetcher.directory.iterdir()) == [fetcher.fetch(server.url + "/moved").path]


def test_close_removes_what_it_downloaded(server: Server, tmp_path: Path) -> None:
    server.routes["/x"] = Route()
    with Fetcher(timeout=5) as own:
        path = own.fetch(server.url + "/x").path
        directory = own.directory
        assert path.exists()
    assert not path.exists()
    assert not directory.exists()
    with pytest.raises(ValueError, match="closed"):
        own.fetch(server.url + "/x")


# --- checksums --------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
def test_a_matching_checksum_is_accepted(server: Server, fetcher: Fetcher, algorithm: str) -> None:
    server.routes["/pinned.bin"] = Route()
    got = fetcher.fetch(server.url + "/pinned.bin", checksum=sha(algorithm, BODY))
    assert got.path.read_bytes() == BODY
    assert got.digest == sha("sha256", BODY)


def test_a_wrong_checksum_is_an_integrity_error_and_nothing_is_kept(
    server: Server, fetcher: Fetcher
) -> None:
    server.routes["/tampered.bin"] = Route()
    wrong = sha("sha256", b"what the Dockerfile pinned")
    with pytest.raises(CASIntegrityError) as info:
        fetcher.fetch(server.url + "/tampered.bin", checksum=wrong)
    err = info.value
    assert err.expected == wrong
    assert err.actual == sha("sha256", BODY)
    assert err.where == server.url + "/tampered.bin"
    assert list(fetcher.directory.iterdir()) == []


def test_a_wrong_checksum_on_an_earlier_download_is_still_refused(
    server: Server, fetcher: Fetcher
) -> None:
    server.routes["/twice.bin"] = Route()
    fetcher.fetch(server.url + "/twice.bin")
    with pytest.raises(CASIntegrityError):
        fetcher.fetch(server.url + "/twice.bin", checksum=sha("sha512", b"other"))


@pytest.mark.parametrize("checksum", ["md5:abc", "sha256:xyz", "sha256:" + "a" * 63, "deadbeef"])
def test_a_malformed_checksum_is_refused_before_downloading(
    server: Server, fetcher: Fetcher, checksum: str
) -> None:
    with pytest.raises(InvalidDigestError):
        fetcher.fetch(server.url + "/anything", checksum=checksum)
    assert server.hits == {}


def test_parse_checksum() -> None:
    assert parse_checksum("sha256:" + "0" * 64) == ("sha256", "0" * 64)


# --- failures ---------------------------------------------------------------------------------


def test_offline_is_a_retryable_network_error_naming_the_url(fetcher: Fetcher) -> None:
    url = f"http://127.0.0.1:{closed_port()}/tool.tar.gz"
    with pytest.raises(NetworkError) as info:
        fetcher.fetch(url)
    assert url in str(info.value)
    assert "network" in str(info.value)
    assert info.value.retryable
    assert list(fetcher.directory.iterdir()) == []


def test_http_errors_say_the_status_and_only_server_errors_are_retryable(
    server: Server, fetcher: Fetcher
) -> None:
    with pytest.raises(NetworkError, match="HTTP 404") as info:
        fetcher.fetch(server.url + "/missing")
    assert not info.value.retryable
    server.routes["/down"] = Route(fail_first=100)
    with pytest.raises(NetworkError, match="HTTP 503") as info:
        fetcher.fetch(server.url + "/down")
    assert info.value.retryable


def test_retryable_failures_are_retried_with_backoff(server: Server, tmp_path: Path) -> None:
    server.routes["/flaky"] = Route(fail_first=2)
    delays: list[float] = []
    with Fetcher(tmp_path, timeout=5, attempts=3, backoff=0.25, sleep=delays.append) as f:
        assert f.fetch(server.url + "/flaky").path.read_bytes() == BODY
    assert server.hits["/flaky"] == 3
    assert len(delays) == 2
    assert 0 <= delays[0] <= 0.25 and 0 <= delays[1] <= 0.5


def test_a_client_error_is_not_retried(server: Server, tmp_path: Path) -> None:
    delays: list[float] = []
    with Fetcher(tmp_path, attempts=5, sleep=delays.append) as f, pytest.raises(NetworkError):
        f.fetch(server.url + "/missing")
    assert server.hits["/missing"] == 1
    assert delays == []


def test_a_server_that_does_not_answer_times_out(server: Server, tmp_path: Path) -> None:
    server.routes["/slow"] = Route(delay=2.0)
    started = time.monotonic()
    with (
        Fetcher(tmp_path, timeout=0.3, attempts=1) as f,
        pytest.raises(NetworkError, match="timed out"),
    ):
        f.fetch(server.url + "/slow")
    assert time.monotonic() - started < 1.8


def test_a_truncated_body_is_a_network_error(server: Server, fetcher: Fetcher) -> None:
    server.routes["/cut"] = Route(truncate=100)
    with pytest.raises(NetworkError, match=r"ended after 100 of \d+ bytes"):
        fetcher.fetch(server.url + "/cut")
    assert list(fetcher.directory.iterdir()) == []


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "file:///etc/passwd"])
def test_only_http_and_https_are_fetched(fetcher: Fetcher, url: str) -> None:
    with pytest.raises(NetworkError, match="only http and https"):
        fetcher.fetch(url)


def test_attempts_must_be_positive() -> None:
    make: Callable[[], Fetcher] = lambda: Fetcher(attempts=0)  # noqa: E731
    with pytest.raises(ValueError, match="attempts"):
        make()
