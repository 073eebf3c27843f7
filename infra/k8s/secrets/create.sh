#!/usr/bin/env bash
# Create (or replace) the Secrets the manifests and pipelines reference, with random values,
# in NAMESPACE (default kubeflow). For a real S3 bucket pass its keys instead:
#   ACCESS_KEY_ID=... SECRET_ACCESS_KEY=... infra/k8s/secrets/create.sh
set -euo pipefail
ns="${NAMESPACE:-kubeflow}"
rand() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
access_key="${ACCESS_KEY_ID:-mtlops-$(rand | cut -c1-12)}"
secret_key="${SECRET_ACCESS_KEY:-$(rand)}"
kubectl -n "$ns" create secret generic mtlops-storage \
  --from-literal=access_key_id="$access_key" --from-literal=secret_access_key="$secret_key" \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$ns" create secret generic mtlops-serving-admin \
  --from-literal=token="${ADMIN_TOKEN:-$(rand)}" \
  --dry-run=client -o yaml | kubectl apply -f -
echo "secrets mtlops-storage and mtlops-serving-admin are in namespace $ns"
