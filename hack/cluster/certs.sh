# Certificate and kubeconfig generation for hack/cluster/up.sh (sourced). Existing files are kept, so
# rerunning `make up` against a running cluster changes nothing.

# new_ca <name> <CN>
new_ca() {
  local name="$1" cn="$2"
  [[ -f "${PKI_DIR}/${name}.crt" ]] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj "/CN=${cn}" \
    -keyout "${PKI_DIR}/${name}.key" -out "${PKI_DIR}/${name}.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    2>/dev/null
}

# new_cert <name> <ca> <subject> <client|server|both> [subjectAltName]
new_cert() {
  local name="$1" ca="$2" subject="$3" kind="$4" san="${5:-}"
  [[ -f "${PKI_DIR}/${name}.crt" ]] && return 0
  local eku
  case "${kind}" in
  client) eku="clientAuth" ;;
  server) eku="serverAuth" ;;
  both) eku="serverAuth,clientAuth" ;;
  esac
  local ext="${PKI_DIR}/${name}.ext"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=${eku}"
    [[ -n "${san}" ]] && echo "subjectAltName=${san}"
  } >"${ext}"
  openssl req -new -newkey rsa:2048 -nodes -subj "${subject}" \
    -keyout "${PKI_DIR}/${name}.key" -out "${PKI_DIR}/${name}.csr" 2>/dev/null
  openssl x509 -req -sha256 -days 3650 -in "${PKI_DIR}/${name}.csr" \
    -CA "${PKI_DIR}/${ca}.crt" -CAkey "${PKI_DIR}/${ca}.key" -CAcreateserial \
    -extfile "${ext}" -out "${PKI_DIR}/${name}.crt" 2>/dev/null
  rm -f "${PKI_DIR}/${name}.csr" "${ext}"
}

# new_kubeconfig <file> <cert name>
new_kubeconfig() {
  local file="$1" cert="$2"
  [[ -f "${file}" ]] && return 0
  cat >"${file}" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: pvpool
  cluster:
    server: https://127.0.0.1:${KUBE_APISERVER_PORT}
    certificate-authority-data: $(base64 -w0 "${PKI_DIR}/ca.crt")
users:
- name: ${cert}
  user:
    client-certificate-data: $(base64 -w0 "${PKI_DIR}/${cert}.crt")
    client-key-data: $(base64 -w0 "${PKI_DIR}/${cert}.key")
contexts:
- name: pvpool
  context:
    cluster: pvpool
    user: ${cert}
current-context: pvpool
KUBECONFIG
  chmod 600 "${file}"
}

generate_certs() {
  mkdir -p "${PKI_DIR}" "${KUBECONFIG_DIR}"
  chmod 700 "${PKI_DIR}"
  new_ca ca "pvpool-cluster-ca"
  new_ca front-proxy-ca "pvpool-front-proxy-ca"
  if [[ ! -f "${PKI_DIR}/sa.key" ]]; then
    openssl genrsa -out "${PKI_DIR}/sa.key" 2048 2>/dev/null
    openssl rsa -in "${PKI_DIR}/sa.key" -pubout -out "${PKI_DIR}/sa.pub" 2>/dev/null
  fi
  new_cert apiserver ca "/CN=kube-apiserver" server \
    "IP:127.0.0.1,IP:${KUBERNETES_SERVICE_IP},IP:${NODE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  new_cert apiserver-kubelet-client ca "/O=system:masters/CN=kube-apiserver-kubelet-client" client
  new_cert front-proxy-client front-proxy-ca "/CN=front-proxy-client" client
  new_cert admin ca "/O=system:masters/CN=kubernetes-admin" client
  new_cert kube-controller-manager ca "/CN=system:kube-controller-manager" client
  new_cert kube-scheduler ca "/CN=system:kube-scheduler" client
  new_cert kubelet ca "/O=system:nodes/CN=system:node:${NODE_NAME}" client
  new_cert kubelet-serving ca "/CN=${NODE_NAME}" server "IP:${NODE_IP},IP:127.0.0.1,DNS:${NODE_NAME},DNS:localhost"
  new_cert pvpool-apiserver ca "/CN=${PVPOOL_APISERVER_SERVICE}.${PVPOOL_NAMESPACE}.svc" server \
    "DNS:${PVPOOL_APISERVER_SERVICE}.${PVPOOL_NAMESPACE}.svc,DNS:${PVPOOL_APISERVER_SERVICE}.${PVPOOL_NAMESPACE}.svc.cluster.local,DNS:localhost,IP:127.0.0.1"
  new_kubeconfig "${ADMIN_KUBECONFIG}" admin
  new_kubeconfig "${KUBECONFIG_DIR}/kube-controller-manager.kubeconfig" kube-controller-manager
  new_kubeconfig "${KUBECONFIG_DIR}/kube-scheduler.kubeconfig" kube-scheduler
  new_kubeconfig "${KUBECONFIG_DIR}/kubelet.kubeconfig" kubelet
}
