"""Checks the Kubernetes manifests the Helm chart renders (`helm template` output).

Usage:
  python3 scripts/check_manifests.py RENDER.yaml --label NAME --kinds Kind,Kind,...
      [--secret VALUE]... [--sandbox] [--digest sha256:…] [--security tls,mtls,callers]
  python3 scripts/check_manifests.py RENDER.yaml --materialize DIR
  python3 scripts/check_manifests.py --chart-docs

The first form prints one `ok - ...` / `not ok - ...` line per property (scripts/e2e.sh
counts them) and exits non-zero if any failed. `--kinds` lists the kinds the render must
hold, once per object; `--secret` names a secret value of the values file, which must
appear in the chart's Secret and nowhere else; `--security` lists what the render turns on
(TLS, client certificates, a callers file), and nothing else may be.

The third form checks the chart's documentation: a `# --` comment on every value of
values.yaml, and every value in the chart's README.

The second form writes what a pod of the Deployment would see, for running the image
with it: DIR/config/ (the ConfigMap's files), DIR/secrets/ (the Secret's keys, decoded),
DIR/env (KEY=VALUE per line), DIR/args (one per line), DIR/volumes/NAME/ (the chart's other
Secret volumes, such as the suites', as projected) and DIR/mounts (`config PATH`,
`secrets PATH`, `volume NAME PATH`).
"""

import argparse
import base64
import json
import pathlib
import re
import sys
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "wecom-kf-upgrade"
SERVICE = "wecom.kf.v1.CustomerUpgradeService"
CONTAINER = "wecom-kf-upgrade"


class Render:
    """The objects of one `helm template` output, by kind."""

    def __init__(self, path):
        self.text = pathlib.Path(path).read_text()
        self.docs = [d for d in yaml.safe_load_all(self.text) if d]

    def all(self, kind):
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind, pred=lambda d: True):
        found = [d for d in self.all(kind) if pred(d)]
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    def deployment(self):
        return self.one("Deployment")

    def gateway(self):
        containers = self.deployment()["spec"]["template"]["spec"]["containers"]
        return next(c for c in containers if c["name"] == CONTAINER)

    def test_pod(self):
        return self.one(
            "Pod",
            lambda d: d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test",
        )

    def config_map(self):
        return self.one("ConfigMap")

    def config(self):
        return tomllib.loads(self.config_map()["data"]["config.toml"])

    def main_service(self):
        return self.one("Service", lambda d: d["spec"].get("clusterIP") != "None" and not is_callback(d))

    def callback_service(self):
        services = [d for d in self.all("Service") if is_callback(d)]
        return services[0] if services else None

    def secret(self):
        """The chart's Secret of the corp secrets (named like the Deployment)."""
        name = self.deployment()["metadata"]["name"]
        secrets = [d for d in self.all("Secret") if d["metadata"]["name"] == name]
        return secrets[0] if secrets else None

    def secret_named(self, name):
        secrets = [d for d in self.all("Secret") if d["metadata"]["name"] == name]
        return secrets[0] if secrets else None


def is_callback(service):
    """The suites' callback Service: its only port is named `callback`."""
    return [p["name"] for p in service["spec"]["ports"]] == ["callback"]


def pod_specs(render):
    """Every pod the chart creates: the gateway's template and the test pod."""
    specs = [("Deployment", render.deployment()["spec"]["template"]["spec"])]
    specs += [("Pod " + p["metadata"]["name"], p["spec"]) for p in render.all("Pod")]
    return specs


def port_number(container, name):
    ports = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == name]
    assert len(ports) == 1, f"container {container['name']} has no single port named {name}"
    return ports[0]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def volume_mount_for(spec, container, path):
    """The volume (and its mount) that holds PATH in the container, or (None, None)."""
    for m in container.get("volumeMounts", []):
        prefix = m["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            volume = next(v for v in spec.get("volumes", []) if v["name"] == m["name"])
            return volume, m
    return None, None


# === checks ===
# Each takes the render and the options, asserts, and returns a short note (or None).


def check_kinds(render, opts):
    want = sorted(k for k in opts.kinds.split(",") if k)
    got = sorted(d["kind"] for d in render.docs)
    assert got == want, f"kinds {got}, expected {want}"
    return ", ".join(want)


def check_probes(render, opts):
    container = render.gateway()
    grpc_port = port_number(container, "grpc")
    listen_port = int(render.config()["listen"].rsplit(":", 1)[1])
    assert listen_port == grpc_port, f"config listens on {listen_port}, container port is {grpc_port}"
    args = container.get("args", [])
    if "--listen" in args:
        flag_port = int(args[args.index("--listen") + 1].rsplit(":", 1)[1])
        assert flag_port == grpc_port, f"--listen port {flag_port}, container port is {grpc_port}"
    env = {e["name"] for e in container.get("env", [])}
    closed_health = render.config().get("auth", {}).get("open_health") is False
    if "WECOM_TLS_CERT_FILE" in env or closed_health:
        # The kubelet's gRPC probes speak neither TLS nor tokens: the admin port answers.
        paths = {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
        for kind, path in paths.items():
            probe = container.get(kind)
            assert probe, f"no {kind}"
            handlers = {"grpc", "httpGet", "tcpSocket", "exec"} & probe.keys()
            assert handlers == {"httpGet"}, f"{kind} uses {sorted(handlers)}, not an HTTP probe"
            get = probe["httpGet"]
            assert get["path"] == path, f"{kind} asks {get['path']}, not {path}"
            assert get["port"] in ("admin", port_number(container, "admin")), f"{kind} asks port {get['port']}"
        return "HTTP on the admin port (the gRPC port needs TLS or a token)"
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        assert probe, f"no {kind}"
        handlers = {"grpc", "httpGet", "tcpSocket", "exec"} & probe.keys()
        assert handlers == {"grpc"}, f"{kind} uses {sorted(handlers)}, not a gRPC probe"
        assert probe["grpc"]["port"] == grpc_port, f"{kind} probes port {probe['grpc']['port']}, not {grpc_port}"
    readiness = container["readinessProbe"]["grpc"].get("service")
    assert readiness == SERVICE, f"readiness asks about {readiness!r}, not {SERVICE}"
    return f"gRPC on port {grpc_port}"


def check_restricted(render, opts):
    """The "restricted" Pod Security Standard, plus a read-only root and resources."""
    allowed_volumes = {"configMap", "secret", "emptyDir", "projected", "downwardAPI",
                       "persistentVolumeClaim", "ephemeral", "csi"}
    for where, spec in pod_specs(render):
        psc = spec.get("securityContext", {})
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(flag), f"{where}: {flag}"
        for v in spec.get("volumes", []):
            kinds = set(v) - {"name"}
            assert kinds <= allowed_volumes, f"{where}: volume {v['name']} is {kinds}"
        assert psc.get("runAsUser", 1) != 0, f"{where}: pod runs as root"
        for c in spec.get("initContainers", []) + spec["containers"]:
            csc = c.get("securityContext", {})
            name = f"{where} container {c['name']}"
            non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot"))
            assert non_root is True, f"{name}: runAsNonRoot is {non_root}"
            assert csc.get("runAsUser", 1) != 0, f"{name}: runs as root"
            assert csc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation not false"
            assert not csc.get("privileged"), f"{name}: privileged"
            caps = csc.get("capabilities", {})
            assert "ALL" in caps.get("drop", []), f"{name}: capabilities not dropped: {caps}"
            assert set(caps.get("add", [])) <= {"NET_BIND_SERVICE"}, f"{name}: adds {caps['add']}"
            seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
            assert seccomp == "RuntimeDefault", f"{name}: seccompProfile {seccomp}"
            assert csc.get("readOnlyRootFilesystem") is True, f"{name}: root filesystem writable"
            for p in c.get("ports", []):
                assert "hostPort" not in p, f"{name}: hostPort"
            res = c.get("resources", {})
            for key in ("cpu", "memory"):
                assert key in res.get("requests", {}), f"{name}: no {key} request"
            assert "memory" in res.get("limits", {}), f"{name}: no memory limit"
    return f"{len(pod_specs(render))} pod(s)"


def check_secrets(render, opts):
    spec = render.deployment()["spec"]["template"]["spec"]
    container = render.gateway()
    secret = render.secret()
    secret_text = yaml.safe_dump(secret) if secret else ""
    env = {e["name"]: e for e in container.get("env", [])}

    # No secret value in the environment, the arguments or any object but the chart's
    # Secrets (the corp secrets', and the suites' whose secrets are in the values).
    secrets = render.all("Secret")
    for value in opts.secret:
        for doc in render.docs:
            if doc["kind"] == "Secret":
                continue
            assert value not in json.dumps(doc, ensure_ascii=False), (
                f"a secret value appears in {doc['kind']} {doc['metadata']['name']}"
            )
        assert secrets, "no Secret holds the secrets"
        assert any(value in base64.b64decode(v).decode() for d in secrets for v in d.get("data", {}).values()), (
            "a secret value is missing from the chart's Secrets")
    assert "WECOM_CORP_SECRET" not in env, "WECOM_CORP_SECRET is set in the environment"
    for e in container.get("env", []):
        if re.search(r"SECRET|TOKEN|PASSWORD", e["name"]) and not e["name"].endswith("_FILE"):
            raise AssertionError(f"environment variable {e['name']} looks like a secret")

    # Every secret the gateway reads is a file in a mounted Secret that has the key.
    files = []
    if "WECOM_CORP_SECRET_FILE" in env:
        files.append(("WECOM_CORP_SECRET_FILE", env["WECOM_CORP_SECRET_FILE"]["value"]))
    for i, app in enumerate(render.config().get("apps", [])):
        assert "secret" not in app, f"apps[{i}] has its secret inline in config.toml"
        assert "secret_file" in app, f"apps[{i}] has no secret_file"
        files.append((f"apps[{i}].secret_file", app["secret_file"]))
    config = render.config()
    for i, suite in enumerate(config.get("suites", [])):
        for key in ("suite_secret", "token", "encoding_aes_key"):
            assert key not in suite and f"{key}_env" not in suite, f"suites[{i}].{key} is not read from a file"
        for key in ("suite_secret_file", "token_file", "encoding_aes_key_file", "corps_file"):
            assert key in suite, f"suites[{i}] has no {key}"
            files.append((f"suites[{i}].{key}", suite[key]))
    if "apps_file" in config:
        files.append(("apps_file", config["apps_file"]))
    if opts.sandbox:
        # `serve --sandbox` gives every app the demo credentials and reads no secret.
        assert not render.all("Secret"), "the sandbox needs no Secret"
        return "sandbox: no secret is read"
    for key, path in files:
        volume, mount = volume_mount_for(spec, container, path)
        assert volume and "secret" in volume, f"{key} {path} is not in a mounted Secret"
        # A whole volume, which the kubelet updates: a changed corps file or apps file
        # reaches the gateway without a restart (a subPath mount would freeze it).
        assert mount.get("readOnly") and "subPath" not in mount, f"{key}: mounted writable or by subPath"
        item = path[len(mount["mountPath"].rstrip("/")) + 1:]
        items = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
        assert not items or item in items, f"{key}: the volume does not hold {item}"
        chart_secret = render.secret_named(volume["secret"]["secretName"])
        if chart_secret is not None:
            assert items.get(item, item) in chart_secret.get("data", {}), (
                f"{key}: the Secret {chart_secret['metadata']['name']} has no key {items.get(item, item)}")
    return f"{len(files)} secret file(s), {len(opts.secret)} value(s) only in the Secret"


def check_security(render, opts):
    """TLS files and the callers file: mounted Secrets (whole volumes, which the kubelet
    updates, so renewals reach the gateway), named by their variables; only what was asked."""
    spec = render.deployment()["spec"]["template"]["spec"]
    container = render.gateway()
    env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    want = {part for part in opts.security.split(",") if part}
    variables = {
        "tls": ["WECOM_TLS_CERT_FILE", "WECOM_TLS_KEY_FILE"],
        "mtls": ["WECOM_TLS_CLIENT_CA_FILE"],
        "callers": ["WECOM_CALLERS_FILE"],
    }
    for part, names in variables.items():
        for name in names:
            if part not in want:
                assert name not in env, f"{name} is set, but {part} was not asked for"
                continue
            assert name in env, f"{name} is not set"
            volume, mount = volume_mount_for(spec, container, env[name])
            assert volume and "secret" in volume, f"{name} {env[name]} is not in a mounted Secret"
            assert mount.get("readOnly") and "subPath" not in mount, f"{name}: mounted writable or by subPath"
            item = env[name][len(mount["mountPath"].rstrip("/")) + 1:]
            items = [i["path"] for i in volume["secret"].get("items", [])]
            assert not items or item in items, f"{name}: the volume does not hold {item}"
    auth = render.config().get("auth")
    assert (auth is not None) == ("callers" in want), f"config.toml [auth] is {auth}"
    return ", ".join(sorted(want)) or "plaintext, every caller let in"


def check_grace(render, opts):
    server = render.config()["server"]
    drain, grace = server["drain_delay_ms"], server["shutdown_grace_ms"]
    period = render.deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # The worst case of the gateway's shutdown: the admin port gets its own grace too.
    worst = drain + 2 * grace
    assert period * 1000 > worst, (
        f"terminationGracePeriodSeconds {period} s is not above drain {drain} ms + 2 x grace {grace} ms"
    )
    return f"{period} s > {drain} ms + 2 x {grace} ms"


def check_image(render, opts):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    version = cargo["package"]["version"]
    assert str(chart["appVersion"]) == version, f"appVersion {chart['appVersion']} is not the crate version {version}"
    for where, spec in pod_specs(render):
        for c in spec["containers"]:
            image = c["image"]
            if opts.digest:
                # Pinned by digest: exactly that image, whatever the tag.
                assert image.endswith("@" + opts.digest), f"{where}: {image} is not pinned to {opts.digest}"
                continue
            assert "@" not in image, f"{where}: {image} is pinned by digest"
            tag = image.rsplit(":", 1)[1]
            assert tag == version, f"{where}: image tag {tag} is not appVersion {version}"
    return f"digest {opts.digest}" if opts.digest else f"tag {version}"


def check_services(render, opts):
    pod_labels = render.deployment()["spec"]["template"]["metadata"]["labels"]
    test_labels = render.test_pod()["metadata"]["labels"] if render.all("Pod") else {}
    container = render.gateway()
    services = [s for s in render.all("Service") if not is_callback(s)]
    for svc in services:
        name = svc["metadata"]["name"]
        selector = svc["spec"]["selector"]
        assert matches(selector, pod_labels), f"Service {name} does not select the gateway pods"
        assert not test_labels or not matches(selector, test_labels), f"Service {name} selects the test pod"
        ports = {p["name"]: p for p in svc["spec"]["ports"]}
        grpc = ports.get("grpc")
        assert grpc, f"Service {name} has no port named grpc"
        assert grpc.get("appProtocol") == "grpc", f"Service {name}: grpc port's appProtocol is {grpc.get('appProtocol')}"
        assert grpc["targetPort"] in ("grpc", port_number(container, "grpc")), f"Service {name}: grpc targetPort"
    main = render.main_service()
    admin = {p["name"]: p for p in main["spec"]["ports"]}.get("admin")
    assert admin and admin["targetPort"] in ("admin", port_number(container, "admin")), "no admin port on the Service"
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    for h in headless:
        port = h["spec"]["ports"][0]["port"]
        assert port == port_number(container, "grpc"), "the headless Service's port is not the container's"
    for svc in services:
        names = {p["name"] for p in svc["spec"]["ports"]}
        assert "callback" not in names, f"Service {svc['metadata']['name']} carries the callback port"
    return f"{len(services)} Service(s), {len(headless)} headless"


def check_rollout(render, opts):
    tmpl = render.deployment()["spec"]["template"]
    notes = []
    annotations = tmpl["metadata"].get("annotations", {})
    assert re.fullmatch(r"[0-9a-f]{64}", annotations.get("checksum/config", "")), "no checksum/config annotation"
    chart_secret = render.secret()
    if chart_secret:
        assert re.fullmatch(r"[0-9a-f]{64}", annotations.get("checksum/secret", "")), "no checksum/secret annotation"
    if any(d["metadata"]["name"].endswith("-suites") for d in render.all("Secret")):
        assert re.fullmatch(r"[0-9a-f]{64}", annotations.get("checksum/suites", "")), "no checksum/suites annotation"
    sa = render.all("ServiceAccount")
    for a in sa:
        assert a.get("automountServiceAccountToken") is False, "the ServiceAccount automounts its token"
    assert tmpl["spec"].get("automountServiceAccountToken") is False, "the pods mount a ServiceAccount token"
    labels = tmpl["metadata"]["labels"]
    for pdb in render.all("PodDisruptionBudget"):
        assert matches(pdb["spec"]["selector"]["matchLabels"], labels), "the PodDisruptionBudget selects no gateway pod"
        notes.append("PDB")
    hpas = render.all("HorizontalPodAutoscaler")
    for hpa in hpas:
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["name"] == render.deployment()["metadata"]["name"], "HPA target"
        assert "replicas" not in render.deployment()["spec"], "the Deployment fixes replicas under an HPA"
        notes.append("HPA")
    spread = tmpl["spec"].get("topologySpreadConstraints", [])
    keys = {c["topologyKey"] for c in spread}
    assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys, f"spread over {keys}"
    for c in spread:
        assert matches(c["labelSelector"]["matchLabels"], labels), "a spread constraint selects no gateway pod"
    return ", ".join(["checksums", "no token"] + notes + ["spread over nodes and zones"])


def check_network_policy(render, opts):
    policies = render.all("NetworkPolicy")
    if not policies:
        return "none"
    pol = policies[0]
    labels = render.deployment()["spec"]["template"]["metadata"]["labels"]
    assert matches(pol["spec"]["podSelector"]["matchLabels"], labels), "the NetworkPolicy selects no gateway pod"
    grpc_port = port_number(render.gateway(), "grpc")
    rules = [r for r in pol["spec"]["ingress"] if any(p["port"] == grpc_port for p in r.get("ports", []))]
    assert rules, "no ingress rule for the gRPC port"
    test_labels = render.test_pod()["metadata"]["labels"]
    for r in rules:
        peers = r.get("from")
        assert peers is None or any(
            "podSelector" in p and "namespaceSelector" not in p and matches(p["podSelector"]["matchLabels"], test_labels)
            for p in peers
        ), "the helm test pod may not reach the gRPC port"
    dns = [r for r in pol["spec"]["egress"] if any(p["port"] == 53 for p in r.get("ports", []))]
    assert dns, "no egress for DNS"
    return "gRPC ingress, DNS egress"


# Fields of the Prometheus operator's CRDs (monitoring.coreos.com/v1) the chart may use.
SERVICE_MONITOR_SPEC = {"endpoints", "selector", "namespaceSelector", "jobLabel", "targetLabels",
                        "podTargetLabels", "sampleLimit", "attachMetadata"}
SERVICE_MONITOR_ENDPOINT = {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout",
                            "honorLabels", "honorTimestamps", "relabelings", "metricRelabelings",
                            "tlsConfig", "bearerTokenSecret", "authorization", "params",
                            "followRedirects", "enableHttp2", "filterRunning"}
RULE_GROUP = {"name", "interval", "rules", "limit", "partial_response_strategy", "labels"}
RULE = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


def check_monitoring(render, opts):
    monitors, rules = render.all("ServiceMonitor"), render.all("PrometheusRule")
    if not monitors and not rules:
        return "none"
    notes = []
    # kubernetes-validate has no schema for these CRDs (it only warns): check their
    # keys against the Prometheus operator's monitoring.coreos.com/v1 fields here.
    for obj, keys in [(sm["spec"], SERVICE_MONITOR_SPEC) for sm in monitors] + [
        (ep, SERVICE_MONITOR_ENDPOINT) for sm in monitors for ep in sm["spec"]["endpoints"]
    ] + [(pr["spec"], {"groups"}) for pr in rules] + [
        (g, RULE_GROUP) for pr in rules for g in pr["spec"]["groups"]
    ] + [(r, RULE) for pr in rules for g in pr["spec"]["groups"] for r in g["rules"]]:
        assert set(obj) <= keys, f"unknown fields {sorted(set(obj) - keys)} (known: {sorted(keys)})"
    for sm in monitors:
        main = render.main_service()
        assert matches(sm["spec"]["selector"]["matchLabels"], main["metadata"]["labels"]), "ServiceMonitor misses the Service"
        ep = sm["spec"]["endpoints"][0]
        assert ep["port"] == "admin" and ep["path"] == "/metrics", f"ServiceMonitor scrapes {ep}"
        notes.append("ServiceMonitor on admin /metrics")
    for pr in rules:
        # The repository's alert rules, in order: every `- alert:` of files/alerts.yaml
        # (kube-state-metrics, bound to this release), then of files/gateway-alerts.yaml
        # (the gateway's metrics, aggregated by namespace and job).
        bound = re.findall(r"^\s*- alert:\s*(\S+)", (CHART / "files" / "alerts.yaml").read_text(), re.M)
        own = re.findall(r"^\s*- alert:\s*(\S+)", (CHART / "files" / "gateway-alerts.yaml").read_text(), re.M)
        assert bound and own, "files/alerts.yaml or files/gateway-alerts.yaml holds no alert"
        got = [r for g in pr["spec"]["groups"] for r in g["rules"]]
        assert [r.get("alert") for r in got] == bound + own, f"alerts {[r.get('alert') for r in got]}, files have {bound + own}"
        ns = render.deployment()["metadata"].get("namespace")
        deployment = render.deployment()["metadata"]["name"]
        for r in got:
            assert r["expr"].strip(), f"{r['alert']}: empty expr"
            assert "{{" not in r["expr"], f"{r['alert']}: unrendered template in expr"
            if r["alert"] in bound:
                assert f'namespace="{ns}"' in r["expr"] and deployment in r["expr"], f"{r['alert']}: not bound to this release"
            else:
                assert "by (namespace, job" in r["expr"], f"{r['alert']}: not per namespace and job"
                assert "{{ $labels." in r["annotations"]["summary"] + r["annotations"]["description"], (
                    f"{r['alert']}: its Prometheus templates did not survive the render")
            assert r["labels"]["severity"] in ("critical", "warning"), f"{r['alert']}: severity"
            assert r["annotations"].get("summary"), f"{r['alert']}: no summary"
        notes.append(f"PrometheusRule with {len(bound)} alerts of files/alerts.yaml and {len(own)} of files/gateway-alerts.yaml")
    return ", ".join(notes)


def check_suites(render, opts):
    """Suites: the callback port on the container, [callback] listening on it, a Service of
    its own with that port alone, an Ingress (if any) to /suites of it alone, a NetworkPolicy
    rule for it; the corps files the chart renders parse and name their corps. No suite:
    none of it."""
    config = render.config()
    container = render.gateway()
    port_names = [p["name"] for p in container.get("ports", [])]
    callback_svc = render.callback_service()
    ingresses = render.all("Ingress")
    suites = config.get("suites", [])
    if not suites:
        assert "callback" not in port_names, "a callback port without a suite"
        assert "callback" not in config, "[callback] without a suite"
        assert callback_svc is None and not ingresses, "a callback Service or Ingress without a suite"
        return "none"
    notes = [f"{len(suites)} suite(s)"]
    port = port_number(container, "callback")
    listen = int(config["callback"]["listen"].rsplit(":", 1)[1])
    assert listen == port, f"[callback] listens on {listen}, the container port is {port}"
    assert callback_svc is not None, "no callback Service"
    labels = render.deployment()["spec"]["template"]["metadata"]["labels"]
    assert matches(callback_svc["spec"]["selector"], labels), "the callback Service does not select the gateway pods"
    (svc_port,) = callback_svc["spec"]["ports"]
    assert svc_port["targetPort"] in ("callback", port), f"the callback Service targets {svc_port['targetPort']}"
    for ing in ingresses:
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert (path["path"], path["pathType"]) == ("/suites", "Prefix"), f"the Ingress routes {path['path']}"
                backend = path["backend"]["service"]
                assert backend["name"] == callback_svc["metadata"]["name"], f"the Ingress routes to {backend['name']}"
                assert backend["port"] in ({"name": "callback"}, {"number": svc_port["port"]}), backend["port"]
        notes.append("Ingress to /suites")
    for pol in render.all("NetworkPolicy"):
        rules = [r for r in pol["spec"]["ingress"] if any(p["port"] == port for p in r.get("ports", []))]
        assert rules, "the NetworkPolicy lets nobody reach the callback port"
        notes.append("NetworkPolicy rule")
    suites_secret = [d for d in render.all("Secret") if d["metadata"]["name"].endswith("-suites")]
    for d in suites_secret:
        for key, value in d["data"].items():
            if key.endswith(".corps.toml"):
                corps = tomllib.loads(base64.b64decode(value).decode())["corps"]
                for corp in corps:
                    assert set(corp) == {"app", "auth_corpid", "permanent_code"}, f"{key}: {sorted(corp)}"
                notes.append(f"{key}: {len(corps)} corp(s)")
    return ", ".join(notes)


def check_helm_test(render, opts):
    pod = render.test_pod()
    main = render.main_service()
    grpc = {p["name"]: p for p in main["spec"]["ports"]}["grpc"]
    c = pod["spec"]["containers"][0]
    argv = c.get("command", []) + c.get("args", [])
    assert argv[0] == "health", f"the test runs {argv}"
    addr = argv[argv.index("--addr") + 1]
    assert addr == f"{main['metadata']['name']}:{grpc['port']}", f"the test asks {addr}, not the Service"
    assert argv[argv.index("--service") + 1] == SERVICE, "the test asks about another service"
    assert pod["spec"]["restartPolicy"] == "Never"
    env = {e["name"] for e in render.gateway().get("env", [])}
    for flag, variable in (("--tls-ca-file", "WECOM_TLS_CERT_FILE"), ("--tls-cert-file", "WECOM_TLS_CLIENT_CA_FILE")):
        assert (flag in argv) == (variable in env), f"the test's {flag} does not follow the gateway's {variable}"
        if flag in argv:
            volume, _ = volume_mount_for(pod["spec"], c, argv[argv.index(flag) + 1])
            assert volume and "secret" in volume, f"the test's {flag} is not in a mounted Secret"
    return " ".join(argv)


CHECKS = [
    ("objects", check_kinds),
    ("probes: native gRPC on the gRPC port, or HTTP on the admin port when gRPC needs TLS or a token", check_probes),
    ("pods meet the restricted Pod Security Standard, read-only root, resources set", check_restricted),
    ("secrets are mounted files, never in env, args or the ConfigMap", check_secrets),
    ("TLS files and the callers file come from mounted Secret volumes, as asked", check_security),
    ("terminationGracePeriodSeconds exceeds drain delay + 2 x shutdown grace", check_grace),
    ("the image is appVersion, the crate version (or the digest it is pinned to)", check_image),
    ("Services: grpc port with appProtocol grpc, admin port, selecting only gateway pods", check_services),
    ("rollout: checksum annotations, no ServiceAccount token, PDB/HPA/spread select the pods", check_rollout),
    ("NetworkPolicy", check_network_policy),
    ("ServiceMonitor and PrometheusRule", check_monitoring),
    ("suites: the callback port alone on its own Service and Ingress, files from Secrets", check_suites),
    ("helm test pod runs `wecom-kf-upgrade health` against the Service", check_helm_test),
]


def run_checks(render, opts):
    failed = 0
    for title, check in CHECKS:
        name = f"manifests ({opts.label}): {title}"
        try:
            note = check(render, opts)
        except (AssertionError, KeyError, IndexError, StopIteration, ValueError) as e:
            failed += 1
            print(f"not ok - {name}")
            print(f"    # {type(e).__name__}: {e}")
        else:
            print(f"ok - {name}" + (f" [{note}]" if note else ""))
    return 1 if failed else 0


def materialize(render, out):
    out = pathlib.Path(out)
    spec = render.deployment()["spec"]["template"]["spec"]
    container = render.gateway()
    (out / "config").mkdir(parents=True)
    (out / "secrets").mkdir()
    for name, text in render.config_map()["data"].items():
        (out / "config" / name).write_text(text)
    secret = render.secret()
    for key, value in (secret or {}).get("data", {}).items():
        (out / "secrets" / key).write_bytes(base64.b64decode(value))
    main_secret = secret["metadata"]["name"] if secret else None
    lines = []
    for e in container.get("env", []):
        assert "value" in e, f"env {e['name']} is not a plain value"
        lines.append(f"{e['name']}={e['value']}")
    (out / "env").write_text("".join(line + "\n" for line in lines))
    (out / "args").write_text("".join(a + "\n" for a in container.get("args", [])))
    mounts = []
    for m in container.get("volumeMounts", []):
        volume = next(v for v in spec["volumes"] if v["name"] == m["name"])
        if "configMap" in volume:
            mounts.append(f"config {m['mountPath']}")
        elif "secret" in volume and volume["secret"]["secretName"] == main_secret:
            mounts.append(f"secrets {m['mountPath']}")
        elif "secret" in volume and render.secret_named(volume["secret"]["secretName"]):
            # Another Secret of the chart's (the suites'): its items, as the kubelet projects them.
            data = render.secret_named(volume["secret"]["secretName"])["data"]
            items = volume["secret"].get("items") or [{"key": k, "path": k} for k in data]
            (out / "volumes" / m["name"]).mkdir(parents=True)
            for item in items:
                (out / "volumes" / m["name"] / item["path"]).write_bytes(base64.b64decode(data[item["key"]]))
            mounts.append(f"volume {m['name']} {m['mountPath']}")
    (out / "mounts").write_text("".join(line + "\n" for line in mounts))


def documented_values(text):
    """The values of values.yaml that carry a `# --` comment, and the keys that carry
    none but are leaves (every key is either documented or a section of documented keys)."""
    documented, bare = [], []
    stack, comment, inside = [], [], None
    lines = text.splitlines()
    for n, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if not stripped:
            comment = []
            continue
        if inside is not None and indent > inside:
            continue  # part of a documented value (a map or a list)
        inside = None
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        m = re.match(r"^\s*([A-Za-z][\w]*):(.*)$", line)
        if not m:
            comment = []
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([name for _, name in stack] + [m.group(1)])
        if comment and comment[0].startswith("# --"):
            documented.append(path)
            inside = indent
        else:
            following = next((x for x in lines[n + 1:] if x.strip() and not x.strip().startswith("#")), "")
            has_children = not m.group(2).strip() and len(following) - len(following.lstrip()) > indent
            if has_children:
                stack.append((indent, m.group(1)))
            else:
                bare.append(path)
        comment = []
    return documented, bare


def check_chart_docs():
    failed = 0
    values = (CHART / "values.yaml").read_text()
    documented, bare = documented_values(values)
    name = "values.yaml: a `# --` comment on every value"
    if bare or not documented:
        failed += 1
        print(f"not ok - {name}")
        print(f"    # without a comment: {', '.join(bare) or '(no value found)'}")
    else:
        print(f"ok - {name} [{len(documented)} values]")
    readme = (CHART / "README.md").read_text()
    missing = [p for p in documented if f"`{p}`" not in readme]
    name = "the chart README documents every value of values.yaml"
    if missing:
        failed += 1
        print(f"not ok - {name}")
        print(f"    # missing: {', '.join(missing)}")
    else:
        print(f"ok - {name}")
    return 1 if failed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("render", nargs="?")
    parser.add_argument("--chart-docs", action="store_true")
    parser.add_argument("--label", default="render")
    parser.add_argument("--kinds", default="")
    parser.add_argument("--secret", action="append", default=[])
    parser.add_argument("--sandbox", action="store_true")
    parser.add_argument("--digest", default="")
    parser.add_argument("--security", default="")
    parser.add_argument("--materialize", metavar="DIR")
    opts = parser.parse_args()
    if opts.chart_docs:
        return check_chart_docs()
    if not opts.render:
        parser.error("RENDER.yaml is required")
    render = Render(opts.render)
    if opts.materialize:
        materialize(render, opts.materialize)
        return 0
    return run_checks(render, opts)


if __name__ == "__main__":
    sys.exit(main())
