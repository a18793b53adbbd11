"""Credentials never in URLs, and never in what a storage error says (issue 12).

Refusals happen before any network call, so most tests here need no server; those that judge
a real server's answers use the session's SeaweedFS.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from typer.testing import CliRunner

from soundtrack.cli import app
from soundtrack.errors import InputError, StorageError
from soundtrack.redaction import redact
from soundtrack.storage import check_access, open_storage
from soundtrack.storage.s3 import S3Storage, storage_error
from tests.running import build
from tests.s3server import SeaweedServer, free_ports

WHERE_CREDENTIALS_BELONG = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or in an AWS profile"


def new_password() -> str:
    return f"pw-{secrets.token_hex(8)}"


def manifest(storage: str) -> str:
    return (
        f"schema: 1\nsoundtrack: creds\nstorage: {storage}\n"
        "defaults: {duration: 4, formats: [ogg]}\ntracks:\n  - id: cue\n    prompt: strings\n"
    )


def assert_refused_without_the_secret(message: str, secret: str) -> None:
    text = " ".join(message.split())
    assert "must not carry credentials" in text, text
    assert WHERE_CREDENTIALS_BELONG in text, text
    assert secret not in message


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
def test_endpoint_with_a_password_in_the_environment_is_refused(
    variable: str, aws_isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    password = new_password()
    (port,) = free_ports(1)
    monkeypatch.setenv(variable, f"http://AKIDEXAMPLE:{password}@127.0.0.1:{port}")
    with pytest.raises(InputError) as caught:
        open_storage("s3://some-bucket/p", base_dir=tmp_path)
    assert_refused_without_the_secret(str(caught.value), password)
    assert f"'http://127.0.0.1:{port}'" in str(caught.value), "names the endpoint, minus user info"
    assert redact(f"later: {password}") == "later: ***", "the password is remembered"

    result = CliRunner().invoke(app, ["gc", "s3://some-bucket/p", "--soundtrack", "creds"])
    assert result.exit_code == 2, result.output
    assert_refused_without_the_secret(result.output, password)


@pytest.mark.parametrize(
    "template", ["https://game:{secret}@storage.example.com", "game:{secret}@storage.example.com"]
)
def test_endpoint_with_user_info_in_the_aws_config_file_is_refused(
    template: str, aws_isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    password = new_password()
    (aws_isolated / "config").write_text(
        "[profile game-ci]\nregion = us-east-1\n"
        f"endpoint_url = {template.format(secret=password)}\n"
    )
    monkeypatch.setenv("AWS_PROFILE", "game-ci")
    with pytest.raises(InputError) as caught:
        open_storage("s3://some-bucket", base_dir=tmp_path)
    assert_refused_without_the_secret(str(caught.value), password)
    assert "endpoint_url in the AWS config file" in str(caught.value)


@pytest.mark.parametrize(
    "template",
    [
        "s3://AKIDEXAMPLE:{secret}@bucket/prefix",
        "s3://{secret}@bucket",
        "s3:/AKIDEXAMPLE:{secret}@bucket",
        "ftp://user:{secret}@host/folder",
        "https://{secret}@host/folder",
    ],
)
def test_storage_urls_with_credentials_are_refused_for_any_scheme(
    template: str, aws_isolated: Path, tmp_path: Path
) -> None:
    secret = new_password()
    with pytest.raises(InputError) as caught:
        open_storage(template.format(secret=secret), base_dir=tmp_path)
    assert_refused_without_the_secret(str(caught.value), secret)


def test_an_at_sign_outside_the_authority_is_no_credential(
    aws_isolated: Path, tmp_path: Path
) -> None:
    s3 = open_storage("s3://some-bucket/take@2x", base_dir=tmp_path)
    assert isinstance(s3, S3Storage) and s3.prefix == "take@2x/"
    assert open_storage("out@2x", base_dir=tmp_path).url == "out@2x"


@pytest.mark.parametrize("where", ["--out", "SOUNDTRACK_STORAGE"])
def test_build_refuses_credentials_in_out_and_soundtrack_storage(
    where: str, aws_isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    password = new_password()
    url = f"s3://AKIDEXAMPLE:{password}@bucket/p"
    (tmp_path / "m.yaml").write_text(manifest("./out"))
    args = ["build", str(tmp_path / "m.yaml")]
    if where == "--out":
        args += ["--out", url]
    else:
        monkeypatch.setenv("SOUNDTRACK_STORAGE", url)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert_refused_without_the_secret(result.output, password)
    assert not (tmp_path / "out").exists()


def test_storage_errors_redact_what_boto_and_the_server_say(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret_key, password = f"secret-{secrets.token_hex(16)}", new_password()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    echoed = ClientError(
        {
            "Error": {"Code": "InvalidArgument", "Message": f"bad header {secret_key}"},
            # Only the fields that matter here; a real reply has more.
            "ResponseMetadata": {"HTTPStatusCode": 400},  # type: ignore[typeddict-item]
        },
        "PutObject",
    )
    unreachable = EndpointConnectionError(endpoint_url=f"http://u:{password}@127.0.0.1:1/b")
    for exc in (echoed, unreachable):
        error = storage_error("uploading x", exc, endpoint="http://127.0.0.1:1", bucket="b")
        assert secret_key not in str(error) and password not in str(error)
        assert "***" in str(error)
    error = storage_error("x", unreachable, endpoint="", bucket="")
    assert "http://***@127.0.0.1:1/b" in str(error), "the URL stays readable, minus user info"


@pytest.mark.slow
@pytest.mark.parametrize("end", ["\n", "\r\n", "é", " "])
def test_a_key_no_request_can_carry_is_bad_input_never_shown(
    end: str, aws_isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A session token saved with its line end read "connection lost ... is the server
    running?", the token quoted whole; one with a letter outside Latin-1, botocore's traceback."""
    token = f"token-{secrets.token_hex(16)}{end}"
    (closed_port,) = free_ports(1)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"secret-{secrets.token_hex(16)}")
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    (tmp_path / "m.yaml").write_text(manifest("s3://some-bucket/p"))
    result = CliRunner().invoke(app, ["build", str(tmp_path / "m.yaml")])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "the AWS session token in AWS_SESSION_TOKEN holds a line break" in said, said
    assert token.strip() not in result.output and "Traceback" not in result.output


def test_wrong_credentials_from_a_profile_never_appear_and_are_remembered(
    s3_server: SeaweedServer, aws_isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Not in the environment: only botocore's resolved credentials can tell redact() about it.
    wrong = f"wrong-secret-{secrets.token_hex(16)}"
    bucket = s3_server.create_bucket()
    (aws_isolated / "config").write_text(
        f"[profile game-ci]\nregion = us-east-1\nendpoint_url = {s3_server.endpoint}\n"
    )
    (aws_isolated / "credentials").write_text(
        f"[game-ci]\naws_access_key_id = {s3_server.access_key}\naws_secret_access_key = {wrong}\n"
    )
    monkeypatch.setenv("AWS_PROFILE", "game-ci")
    storage = open_storage(f"s3://{bucket}", base_dir=tmp_path)
    with pytest.raises(StorageError, match="access denied") as denied:
        check_access(storage, "st")
    with pytest.raises(StorageError, match="access denied") as reading:
        storage.read_index("creds")

    for error in (denied.value, reading.value):
        assert wrong not in str(error) and "AWS_ACCESS_KEY_ID" in str(error)
    assert redact(f"signed with {wrong}") == "signed with ***"


@pytest.mark.slow
def test_soundtrack_build_with_a_password_in_the_endpoint_exits_2_without_showing_it(
    aws_isolated: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    password, secret_key = new_password(), f"secret-{secrets.token_hex(16)}"
    (closed_port,) = free_ports(1)
    (tmp_path / "m.yaml").write_text(manifest("s3://e2e-bucket/p"))
    env = {
        **os.environ,  # aws_isolated's: no setting from the developer's machine
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": f"http://AKIDEXAMPLE:{password}@127.0.0.1:{closed_port}",
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "SOUNDTRACK_CACHE_DIR": str(tmp_path / "cache"),
    }
    # The refusal comes before any model loads (the model's files are only read).
    result = build(tmp_path, env, "--model", str(tiny_model_dir), "--report", "r.json")
    assert result.returncode == 2, result.stdout + result.stderr
    assert_refused_without_the_secret(result.stderr, password)
    assert "Traceback" not in result.stderr
    assert password not in result.stdout
    assert secret_key not in result.stdout + result.stderr
    assert not (tmp_path / "r.json").exists()


def test_read_only_credentials_are_refused_before_the_build_and_write_nothing(
    s3_server: SeaweedServer, aws_isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A key allowed to read and list passed the access check (a HEAD of the bucket): the
    build started its flow, then failed at its lease, exit 1."""
    bucket = s3_server.create_bucket()
    for name, value in s3_server.reader_env().items():
        monkeypatch.setenv(name, value)
    (tmp_path / "m.yaml").write_text(manifest(f"s3://{bucket}/game"))
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["build", str(tmp_path / "m.yaml")])  # before any server
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert f"checking that s3://{bucket}/game/" in said and "access denied" in said, said
    admin = s3_server.client()
    assert admin.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert not admin.list_multipart_uploads(Bucket=bucket).get("Uploads")
    # The key the build publishes with passes, and leaves no upload behind either.
    for name, value in s3_server.aws_env().items():
        monkeypatch.setenv(name, value)
    check_access(open_storage(f"s3://{bucket}/game", base_dir=tmp_path), "st")
    assert admin.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert not admin.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_an_aws_profile_that_is_nowhere_is_bad_input_not_a_traceback(
    aws_isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "nope")
    with pytest.raises(InputError, match=r"AWS profile 'nope' \(AWS_PROFILE or AWS_DEFAULT"):
        open_storage("s3://bucket/game", base_dir=tmp_path)
    # A profile whose source_profile is nowhere: botocore's InvalidConfigError, not a traceback.
    (aws_isolated / "config").write_text(
        "[profile ci]\nrole_arn = arn:aws:iam::123456789012:role/ci\nsource_profile = gone\n"
    )
    monkeypatch.setenv("AWS_PROFILE", "ci")
    with pytest.raises(InputError, match="AWS config: "):
        open_storage("s3://bucket/game", base_dir=tmp_path)
    result = CliRunner().invoke(app, ["gc", "s3://bucket/game"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
