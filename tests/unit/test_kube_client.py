"""Kubernetes client configuration: kubeconfig, in-cluster, lineage external_ids."""

import json
import logging

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ovn_k8s.config import ConfigError, Settings
from ovn_k8s.kube import client as kclient
from ovn_k8s.sandbox.apiserver import ApiServer

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture(scope="module")
def srv():
    with ApiServer() as s:
        yield s


def lineage(**ext):
    return Settings({}, {}, {k.replace("_", "-"): v for k, v in ext.items()})


def can_list(api):
    with api:
        return client.CoreV1Api(api).list_namespace().items is not None


def test_kubeconfig_flag_wins_over_everything(srv, tmp_path):
    path = srv.write_kubeconfig(tmp_path / "kubeconfig")
    settings = Settings({"kubeconfig": None}, {}, {"k8s-api-server": "10.9.9.9:1"})
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    resolved = kclient.load(settings, kubeconfig=str(path), environ=env)
    assert resolved.source == f"kubeconfig {path}"
    assert resolved.host == srv.url
    assert can_list(kclient.api_client(settings, kubeconfig=str(path), environ=env))


def test_kubeconfig_from_settings_flag(srv, tmp_path):
    path = srv.write_kubeconfig(tmp_path / "kc")
    api = kclient.api_client(Settings({"kubeconfig": str(path)}), environ={})
    assert can_list(api)


def test_in_cluster_when_service_host_is_set(tmp_path):
    (tmp_path / "token").write_text("sa-token-123")
    (tmp_path / "ca.crt").write_text(PEM)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    resolved = kclient.load(lineage(k8s_api_server="10.9.9.9:8080"), environ=env,
                            service_account_dir=tmp_path)
    cfg = resolved.configuration
    assert resolved.source == "in-cluster"
    assert cfg.host == "https://10.96.0.1:443"
    assert cfg.ssl_ca_cert == str(tmp_path / "ca.crt")
    assert cfg.verify_ssl
    assert cfg.get_api_key_with_prefix("BearerToken") == "bearer sa-token-123"


def test_in_cluster_without_service_account_is_a_clear_error(tmp_path):
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(ConfigError, match=r"in-cluster config .*token file does not exist"):
        kclient.load(Settings({}), environ=env, service_account_dir=tmp_path)


@pytest.mark.parametrize("form", ["host:port", "url"])
def test_lineage_settings_reach_the_server(srv, form):
    server = f"127.0.0.1:{srv.port}" if form == "host:port" else f"{srv.url}/"
    api = kclient.api_client(lineage(k8s_api_server=server, k8s_api_token=srv.token),
                             environ={})
    assert api.configuration.host == srv.url
    assert can_list(api)


def test_lineage_wrong_token_is_refused(srv):
    api = kclient.api_client(lineage(k8s_api_server=srv.url, k8s_api_token="nope"), environ={})
    with api, pytest.raises(client.ApiException) as e:
        client.CoreV1Api(api).list_namespace()
    assert e.value.status == 401


def test_merge_patch_fetches_a_rotated_token_after_a_401(srv):
    """Credentials are reused between patches, but a 401 makes the next call read
    them again, so a rotated token is picked up at once."""
    api = kclient.api_client(lineage(k8s_api_server=srv.url, k8s_api_token="old"), environ={})
    with api:
        body = {"metadata": {"labels": {"rotated": "yes"}}}
        with pytest.raises(ApiException) as e:
            kclient.merge_patch(api, "/api/v1/namespaces/default", body)
        assert e.value.status == 401
        api.configuration.api_key["authorization"] = srv.token
        kclient.merge_patch(api, "/api/v1/namespaces/default", body)
        ns = client.CoreV1Api(api).read_namespace("default")
        assert ns.metadata.labels["rotated"] == "yes"


def test_lineage_https_with_ca_file_or_inline_pem(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text(PEM)
    cfg = kclient.load(lineage(k8s_api_server="https://api.example:6443",
                               k8s_ca_certificate=str(ca)), environ={}).configuration
    assert (cfg.host, cfg.ssl_ca_cert, cfg.verify_ssl) == ("https://api.example:6443",
                                                           str(ca), True)
    # As the lineage stored it: the PEM itself, newlines escaped by ovs-vsctl.
    escaped = PEM.replace("\n", "\\n")
    cfg = kclient.load(lineage(k8s_api_server="https://api.example:6443",
                               k8s_ca_certificate=escaped), environ={}).configuration
    assert cfg.ca_cert_data == PEM.strip()
    assert cfg.verify_ssl


def test_nothing_configured_names_every_source():
    with pytest.raises(ConfigError, match=r"--kubeconfig.*in-cluster.*k8s-api-server"):
        kclient.load(Settings({}, {}, {}), environ={})


@pytest.mark.parametrize(("server", "message"), [
    ("10.0.0.1", "expected host:port or a URL"),
    ("10.0.0.1:http", "malformed"),
    ("10.0.0.1:70000", "malformed"),
    ("ftp://10.0.0.1:21", "scheme must be http or https"),
    ("https://:6443", "no host"),
    ("https://u:p@h:6443", "unexpected"),
])
def test_malformed_api_server(server, message):
    with pytest.raises(ConfigError, match=message):
        kclient.load(lineage(k8s_api_server=server), environ={})


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        kclient.load(kubeconfig=str(tmp_path / "none"), environ={})
    with pytest.raises(ConfigError, match=r"k8s-ca-certificate .* not a readable file"):
        kclient.load(lineage(k8s_api_server="https://h:6443",
                             k8s_ca_certificate=str(tmp_path / "none.crt")), environ={})
    bad = tmp_path / "bad"
    bad.write_text("clusters: [oops\n")
    with pytest.raises(ConfigError, match="--kubeconfig"):
        kclient.load(kubeconfig=str(bad), environ={})


def test_token_is_never_logged(srv, caplog, tmp_path):
    secret = "s3cr3t-t0ken-value"
    caplog.set_level(logging.DEBUG)
    api = kclient.api_client(lineage(k8s_api_server=f"127.0.0.1:{srv.port}",
                                     k8s_api_token=secret), environ={})
    api.close()
    with pytest.raises(ConfigError) as e:
        kclient.load(lineage(k8s_api_server="nohost", k8s_api_token=secret), environ={})
    assert secret not in str(e.value)
    assert "plain http" in caplog.text  # the warning is there, the token is not
    assert secret not in caplog.text


def test_merge_patch_authenticates_like_the_client_and_raises_api_errors(tmp_path):
    with ApiServer() as srv:
        path = tmp_path / "kubeconfig"
        srv.write_kubeconfig(path)
        api = kclient.api_client(kubeconfig=str(path))
        v1 = client.CoreV1Api(api)
        v1.create_node({"metadata": {"name": "n1", "annotations": {"keep": "me"}}})
        kclient.merge_patch(api, "/api/v1/nodes/n1", {"metadata": {"annotations": {"a": "b"}}})
        assert v1.read_node("n1").metadata.annotations == {"keep": "me", "a": "b"}
        with pytest.raises(ApiException) as err:
            kclient.merge_patch(api, "/api/v1/nodes/nope", {"metadata": {}})
        assert err.value.status == 404
        assert srv.token not in str(err.value)


def test_lister_speaks_the_list_call_convention(srv):
    """The reflector's lister: query options as the generated calls name them, raw
    responses, and ApiException with status and headers for an error status."""
    api = kclient.api_client(lineage(k8s_api_server=srv.url, k8s_api_token=srv.token),
                             environ={})
    with api:
        resp = kclient.Lister(api, "/api/v1/namespaces")(limit=1, _request_timeout=(5, 5))
        try:
            body = json.loads(resp.read())
        finally:
            resp.release_conn()
        assert len(body["items"]) == 1 and body["metadata"].get("continue")
        with pytest.raises(ApiException) as e:
            kclient.Lister(api, "/api/v1/gizmos")()
        assert e.value.status == 404 and e.value.headers["Content-Type"]
        with pytest.raises(TypeError, match="pretty"):
            kclient.Lister(api, "/api/v1/namespaces")(pretty=True)
