#!/usr/bin/env python3
"""Reads the raftkv StatefulSet out of rendered manifests (`kubectl kustomize k8s/`)
and prints what one of its pods would run, so that the CI check and the Docker
rehearsal start the binary exactly as Kubernetes would.

  statefulset.py RENDERED.yaml replicas        the replica count
  statefulset.py RENDERED.yaml service         the headless service's name
  statefulset.py RENDERED.yaml image           the container image
  statefulset.py RENDERED.yaml args            the container args, one per line
  statefulset.py RENDERED.yaml env ORDINAL     KEY=VALUE lines for pod ORDINAL
  statefulset.py RENDERED.yaml mount           the data volume's mount path
"""
import re
import sys

import yaml


def fail(msg):
    print(f"statefulset.py: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    if len(argv) < 3:
        fail(__doc__)
    with open(argv[1]) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    sets = [d for d in docs if d.get("kind") == "StatefulSet"]
    if len(sets) != 1:
        fail(f"expected one StatefulSet, found {len(sets)}")
    sts = sets[0]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    containers = [c for c in pod["containers"] if c["name"] == "raftkv"]
    if len(containers) != 1:
        fail("expected one container named raftkv")
    c = containers[0]
    what = argv[2]
    if what == "replicas":
        print(spec["replicas"])
    elif what == "service":
        print(spec["serviceName"])
    elif what == "image":
        print(c["image"])
    elif what == "args":
        for a in c.get("command", []) + c.get("args", []):
            print(a)
    elif what == "mount":
        mounts = [m for m in c.get("volumeMounts", []) if m["name"] == "data"]
        if len(mounts) != 1:
            fail("expected one volume mount named data")
        print(mounts[0]["mountPath"])
    elif what == "env":
        if len(argv) != 4:
            fail("env needs an ORDINAL")
        pod_name = f"{sts['metadata']['name']}-{int(argv[3])}"
        seen = {}
        for e in c.get("env", []):
            if "value" in e:
                # As Kubernetes: $(NAME) of a variable defined above is its value.
                value = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: seen.get(m[1], m[0]), str(e["value"]))
            elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
                value = pod_name
            else:
                fail(f"env {e['name']}: only values and fieldRef metadata.name are supported")
            if "\n" in value:
                fail(f"env {e['name']}: multi-line values are not supported")
            seen[e["name"]] = value
            print(f"{e['name']}={value}")
    else:
        fail(f"unknown request {what!r}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv)
