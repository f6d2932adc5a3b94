"""What the schemas cannot see in deploy/: names that must match across files.

Run by deploy/local/check-manifests.sh with the Python of its venv (PyYAML); argument: the
deploy directory. Prints one line per problem and exits 1 when there is any.

- compose.yaml: every secret, volume and depends_on a service names is declared; every
  bind-mounted path exists; the tenantry config it mounts parses.
- kubernetes/: every file the kustomization names exists; every ConfigMap and Secret a pod
  reads is generated there or is secret.example.yaml's; every Service and PodDisruptionBudget
  selects the pods of a Deployment; probes name a declared port; the grace periods cover the
  drain (runtime.drain_timeout + 15 s to confirm stopped statements, + 10 s for serve's API).
- every tenantry config here parses as TOML and holds no secret: no password in a URL, no
  secret_access_key, no token value.
"""

import pathlib
import re
import sys
import tomllib

import yaml

problems = []


def problem(where, message):
    problems.append(f"{where}: {message}")


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def seconds(duration):
    """A tenantry duration of one unit ("30s", "2m", "1h") in seconds."""
    m = re.fullmatch(r"(\d+)\s*(ms|s|m|h)", duration.strip())
    if not m:
        raise ValueError(f"duration {duration!r}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def check_tenantry_config(path, text=None):
    """Parses a tenantry.toml; returns it, or None after recording the problem."""
    try:
        config = tomllib.loads(text if text is not None else path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        problem(path, f"not a valid TOML file: {e}")
        return None

    def walk(value, key_path):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key_path}.{k}" if key_path else k)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key_path}[{i}]")
        elif isinstance(value, str):
            last = key_path.rsplit(".", 1)[-1]
            if last == "secret_access_key":
                problem(path, f"{key_path} holds a secret: set TENANTRY__...__SECRET_ACCESS_KEY instead")
            if re.match(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", value):
                problem(path, f"{key_path} has a password in its URL: set it in the environment instead")

    walk(config, "")
    for i, token in enumerate(config.get("api", {}).get("tokens", [])):
        if not token.get("env") and not token.get("file"):
            problem(path, f"api.tokens[{i}] names neither env nor file")
    return config


def drain_seconds(config):
    return seconds(config.get("runtime", {}).get("drain_timeout", "30s"))


def check_compose(deploy):
    path = deploy / "compose.yaml"
    doc = load_yaml_docs(path)[0]
    services = doc.get("services", {})
    secrets = set(doc.get("secrets", {}) or {})
    volumes = set(doc.get("volumes", {}) or {})
    for name, svc in services.items():
        for s in svc.get("secrets", []) or []:
            s = s if isinstance(s, str) else s.get("source")
            if s not in secrets:
                problem(path, f"service {name} uses secret {s}, which is not declared")
        deps = svc.get("depends_on", []) or []
        for d in deps if isinstance(deps, list) else deps.keys():
            if d not in services:
                problem(path, f"service {name} depends on {d}, which is not a service")
        for v in svc.get("volumes", []) or []:
            source = v.split(":", 1)[0] if isinstance(v, str) else v.get("source", "")
            if source.startswith((".", "/")):
                if not (deploy / source).exists():
                    problem(path, f"service {name} mounts {source}, which does not exist")
            elif source and source not in volumes:
                problem(path, f"service {name} uses volume {source}, which is not declared")
    configs = [
        s
        for s in {v.split(":")[0] for svc in services.values() for v in svc.get("volumes", []) or [] if isinstance(v, str)}
        if s.endswith("tenantry.toml")
    ]
    if not configs:
        problem(path, "no service mounts a tenantry.toml")
    for c in configs:
        config = check_tenantry_config(deploy / c)
        if config is None:
            continue
        drain = drain_seconds(config)
        for name, svc in services.items():
            command = svc.get("command") or []
            if command[:1] in (["serve"], ["worker"]):
                need = drain + 15 + (10 if command[0] == "serve" else 0)
                grace = seconds(svc.get("stop_grace_period", "10s"))
                if grace < need:
                    problem(path, f"service {name}: stop_grace_period {grace:g}s is shorter than its drain ({need:g}s)")


def check_kubernetes(deploy):
    kdir = deploy / "kubernetes"
    kpath = kdir / "kustomization.yaml"
    kust = load_yaml_docs(kpath)[0]
    objects = []
    for r in kust.get("resources", []):
        if not (kdir / r).is_file():
            problem(kpath, f"resource {r} does not exist")
            continue
        objects += [(kdir / r, o) for o in load_yaml_docs(kdir / r)]
    configmaps = {}
    for gen in kust.get("configMapGenerator", []):
        files = {}
        for f in gen.get("files", []):
            key, _, rel = f.rpartition("=") if "=" in f else (pathlib.Path(f).name, "", f)
            if not (kdir / rel).is_file():
                problem(kpath, f"configMapGenerator {gen['name']}: {rel} does not exist")
                continue
            files[key] = kdir / rel
        configmaps[gen["name"]] = files
    secret_example = kdir / "secret.example.yaml"
    secrets = {o["metadata"]["name"]: o for o in load_yaml_docs(secret_example) if o.get("kind") == "Secret"}

    # The tenantry config and the workflows the pods mount.
    config = None
    for name, files in configmaps.items():
        for key, f in files.items():
            if key == "tenantry.toml":
                config = check_tenantry_config(f)
            elif f.suffix == ".toml":
                try:
                    tomllib.loads(f.read_text())
                except tomllib.TOMLDecodeError as e:
                    problem(f, f"not a valid TOML file: {e}")
    if config is None:
        problem(kpath, "no configMapGenerator holds tenantry.toml")
    drain = drain_seconds(config) if config else 30

    pods = []  # (file, deployment name, pod labels, command)
    for f, o in objects:
        if o.get("kind") != "Deployment":
            continue
        name = o["metadata"]["name"]
        spec = o["spec"]["template"]["spec"]
        labels = o["spec"]["template"]["metadata"].get("labels", {})
        selector = o["spec"]["selector"].get("matchLabels", {})
        if any(labels.get(k) != v for k, v in selector.items()):
            problem(f, f"deployment {name}: its selector does not select its own pods")
        containers = spec["containers"]
        args = containers[0].get("args") or containers[0].get("command") or []
        pods.append((f, name, labels, args))
        for v in spec.get("volumes", []):
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                problem(f, f"deployment {name}: ConfigMap {v['configMap']['name']} is not generated by kustomization.yaml")
            if "secret" in v and v["secret"]["secretName"] not in secrets:
                problem(f, f"deployment {name}: Secret {v['secret']['secretName']} is not in secret.example.yaml")
        for c in containers:
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            for m in mounts - {v["name"] for v in spec.get("volumes", [])}:
                problem(f, f"deployment {name}: container {c['name']} mounts {m}, which is not a volume")
            for e in c.get("envFrom", []):
                ref = e.get("secretRef", {}).get("name")
                if ref is not None and ref not in secrets:
                    problem(f, f"deployment {name}: Secret {ref} is not in secret.example.yaml")
            ports = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if port is not None and port not in ports:
                    problem(f, f"deployment {name}: {probe} uses port {port}, which the container does not declare")
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            cfg = env.get("TENANTRY_CONFIG", "")
            if cfg and not any(
                cfg == f"{m['mountPath'].rstrip('/')}/tenantry.toml" for m in c.get("volumeMounts", []) if m["name"] == "config"
            ):
                problem(f, f"deployment {name}: TENANTRY_CONFIG {cfg} is not the mounted tenantry.toml")
        if args[:1] in (["serve"], ["worker"]):
            need = drain + 15 + (10 if args[0] == "serve" else 0)
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if grace < need:
                problem(f, f"deployment {name}: terminationGracePeriodSeconds {grace} is shorter than its drain ({need:g}s)")
    if not any(a[:1] == ["serve"] for *_, a in pods):
        problem(kpath, "no Deployment runs `serve`")
    if not any(a[:1] == ["worker"] for *_, a in pods):
        problem(kpath, "no Deployment runs `worker`")

    for f, o in objects:
        kind, name = o.get("kind"), o["metadata"]["name"]
        if kind == "Service":
            sel = o["spec"].get("selector", {})
        elif kind == "PodDisruptionBudget":
            sel = o["spec"].get("selector", {}).get("matchLabels", {})
        else:
            continue
        if not any(all(labels.get(k) == v for k, v in sel.items()) for _, _, labels, _ in pods):
            problem(f, f"{kind} {name} selects no Deployment's pods")
        if kind == "Service":
            served = [p for p in pods if all(p[2].get(k) == v for k, v in sel.items())]
            if any(p[3][:1] != ["serve"] for p in served):
                problem(f, f"Service {name} selects pods that do not run `serve` (only serve answers HTTP)")


def main():
    deploy = pathlib.Path(sys.argv[1])
    for check in (check_compose, check_kubernetes):
        try:
            check(deploy)
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, IndexError) as e:
            problem(deploy, f"{check.__name__} could not read the files: {type(e).__name__}: {e}")
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
