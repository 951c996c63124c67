"""Checks of deploy/kubernetes beyond its schema (run by xtask/src/deploy.rs
with the venv's Python, which has PyYAML through kubernetes-validate).

usage: deploy_k8s.py MANIFEST_DIR OUT_TOML

Writes OUT_TOML: the ConfigMap's proxy.toml and the Secret's secrets.toml
joined as the pod's init container joins them, for `cloudproxy serve --check`.
Prints `drain_timeout_ms=N` and `ports=...` (the listeners, as EXPOSE
writes them) for the other checks. Exits 1 with every problem found.
"""

import pathlib
import sys
import tomllib

import yaml

manifests, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
problems = []
docs = {}
for path in sorted(manifests.glob("*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            docs.setdefault(doc["kind"], []).append((path.name, doc))


def one(kind):
    found = docs.get(kind, [])
    if len(found) != 1:
        sys.exit(f"{manifests}: expected one {kind}, found {len(found)}")
    return found[0]


def expect(where, what, found, wanted):
    if found != wanted:
        problems.append(f"{where}: {what}: expected {wanted!r}, found {found!r}")


cm_file, configmap = one("ConfigMap")
secret_file, secret = one("Secret")
ds_file, ds = one("DaemonSet")
pdb_file, pdb = one("PodDisruptionBudget")

config = configmap["data"]["proxy.toml"]
keys = secret["stringData"]["secrets.toml"]
out.write_text(config + keys)
merged = tomllib.loads(config + keys)

pod = ds["spec"]["template"]["spec"]
expect(ds_file, "spec.template.spec.hostNetwork", pod.get("hostNetwork"), True)
expect(ds_file, "spec.template.spec.dnsPolicy", pod.get("dnsPolicy"), "ClusterFirstWithHostNet")
drain_ms = merged.get("limits", {}).get("drain_timeout_ms", 10000)
grace = pod.get("terminationGracePeriodSeconds", 30)
if grace * 1000 <= drain_ms:
    problems.append(
        f"{ds_file}: terminationGracePeriodSeconds: expected above the drain deadline "
        f"({cm_file}: limits.drain_timeout_ms = {drain_ms}), found {grace} s"
    )
expect(ds_file, "securityContext.runAsNonRoot", pod["securityContext"].get("runAsNonRoot"), True)

# The init container's `cat` must read the files where the volumes mount them.
mounts = {}
containers = pod["initContainers"] + pod["containers"]
for c in containers:
    for m in c.get("volumeMounts", []):
        mounts[(c["name"], m["name"])] = m["mountPath"]
    sc = c.get("securityContext", {})
    where = f"{ds_file}: container {c['name']}: securityContext"
    expect(where, "allowPrivilegeEscalation", sc.get("allowPrivilegeEscalation"), False)
    expect(where, "readOnlyRootFilesystem", sc.get("readOnlyRootFilesystem"), True)
    expect(where, "capabilities.drop", sc.get("capabilities", {}).get("drop"), ["ALL"])
    expect(where, "capabilities.add", sc.get("capabilities", {}).get("add"), ["NET_BIND_SERVICE"])
volumes = {v["name"]: v for v in pod["volumes"]}
config_volume = next(n for n, v in volumes.items() if v.get("configMap", {}).get("name") == configmap["metadata"]["name"])
keys_volume = next(n for n, v in volumes.items() if v.get("secret", {}).get("secretName") == secret["metadata"]["name"])
init = pod["initContainers"][0]
script = " ".join(init["command"])
for volume, key in [(config_volume, "proxy.toml"), (keys_volume, "secrets.toml")]:
    path = f"{mounts.get((init['name'], volume))}/{key}"
    if path not in script:
        problems.append(f"{ds_file}: init container {init['name']}: expected it to read {path}, found {script!r}")
if "serve --check" not in script:
    problems.append(f"{ds_file}: init container {init['name']}: expected it to run `serve --check`")
joined = script.split("> ")[1].split()[0] if "> " in script else None
main = pod["containers"][0]
args = main.get("args", [])
config_arg = args[args.index("--config") + 1] if "--config" in args else None
expect(ds_file, f"container {main['name']}: --config (the file the init container writes)", config_arg, joined)

probes = {
    "livenessProbe": "/livez",
    "readinessProbe": "/readyz",
}
admin_bind = merged.get("admin", {}).get("bind")
admin_port = int(admin_bind.rsplit(":", 1)[1]) if admin_bind else None
expect(cm_file, "proxy.toml: [admin] bind's port (the probes' port)", admin_port, 9600)
for probe, path in probes.items():
    get = main.get(probe, {}).get("httpGet", {})
    expect(ds_file, f"{probe}.httpGet", (get.get("path"), get.get("port")), (path, 9600))

labels = ds["spec"]["template"]["metadata"]["labels"]
for k, v in pdb["spec"]["selector"]["matchLabels"].items():
    if labels.get(k) != v:
        problems.append(f"{pdb_file}: selector {k}={v} does not match the DaemonSet's pod labels {labels}")
namespaces = {d["metadata"]["name"] for _, d in docs.get("Namespace", [])}
for kind, found in docs.items():
    for name, d in found:
        if kind != "Namespace" and d["metadata"].get("namespace") not in namespaces:
            problems.append(f"{name}: {kind} {d['metadata']['name']}: namespace {d['metadata'].get('namespace')!r} is not one of {sorted(namespaces)}")

if problems:
    sys.exit("\n".join(problems))

listeners = merged.get("listeners", {})
ports = []
for p in listeners.get("allocation_ports", [1080, 8000, 25000, 9700]):
    ports += [f"{p}/tcp", f"{p}/udp"]
ports.append(f"{listeners.get('tcp_relay_port', 4000)}/tcp")
ports.append(f"{listeners.get('udp_relay_ports', '4500-4650')}/udp")
if admin_port is not None:
    ports.append(f"{admin_port}/tcp")
print(f"drain_timeout_ms={drain_ms}")
print("ports=" + " ".join(ports))
