//! Kubernetes' TLS bootstrap of worker kubelets (`kubelet.certificates: bootstrap`), the API
//! side: bootstrap tokens (Secrets `bootstrap-token-<id>` in kube-system, as kubeadm writes
//! them), the RBAC kubeadm sets up for them, and the check clusterctl makes before it approves
//! a kubelet's serving-certificate request (the controller-manager approves no such request:
//! only client ones).

use std::net::IpAddr;

use anyhow::Context as _;
use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};

use super::Client;

/// The group every clusterctl bootstrap token authenticates in (besides
/// `system:bootstrappers`), bound to what a joining kubelet may do.
pub const TOKEN_GROUP: &str = "system:bootstrappers:clusterctl:worker";
/// The label naming the node a token was made for (reset deletes by it).
pub const NODE_LABEL: &str = "clusterctl.io/bootstrap-node";
const SECRETS: &str = "/api/v1/namespaces/kube-system/secrets";
const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
pub const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

/// kubeadm's bindings for bootstrap tokens (its `kubeadm:` names, as `clusterctl:`): joining
/// kubelets may create CSRs, the controller-manager approves their client CSR
/// (nodeclient) and the renewals nodes ask for their own client certificate
/// (selfnodeclient). Plus kube-proxy on such a node, which runs with the kubelet's client
/// certificate: system:node-proxier for the nodes (read Services, Endpoints, EndpointSlices,
/// Nodes; write Events), since no certificate of its own is pushed there.
pub const RBAC: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: 'clusterctl:kubelet-bootstrap'}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'system:node-bootstrapper'}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: 'system:bootstrappers:clusterctl:worker'}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: 'clusterctl:node-autoapprove-bootstrap'}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'system:certificates.k8s.io:certificatesigningrequests:nodeclient'}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: 'system:bootstrappers:clusterctl:worker'}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: 'clusterctl:node-autoapprove-certificate-rotation'}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'system:certificates.k8s.io:certificatesigningrequests:selfnodeclient'}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: 'system:nodes'}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: 'clusterctl:node-proxier'}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'system:node-proxier'}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: 'system:nodes'}]
";

/// A bootstrap token `<id>.<secret>` ([a-z0-9]{6}.[a-z0-9]{16}, the format the apiserver's
/// authenticator accepts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    pub secret: String,
}

impl Token {
    pub fn random() -> Token {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let pick = |n: usize| -> String {
            let mut bytes = vec![0u8; n];
            rand::fill(&mut bytes[..]);
            // 256 % 36 = 4: a negligible bias for a secret of 16 characters (~82 bits).
            bytes
                .iter()
                .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
                .collect()
        };
        Token {
            id: pick(6),
            secret: pick(16),
        }
    }

    pub fn value(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The Secret that makes this token valid for `node`'s TLS bootstrap until `expires`
    /// (RFC 3339); the controller-manager's tokencleaner deletes it then.
    pub fn secret_object(&self, node: &str, expires: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": format!("bootstrap-token-{}", self.id),
                "namespace": "kube-system",
                "labels": {NODE_LABEL: node},
            },
            "type": "bootstrap.kubernetes.io/token",
            "stringData": {
                "description": format!("clusterctl: TLS bootstrap of node {node}"),
                "token-id": self.id,
                "token-secret": self.secret,
                "expiration": expires,
                "usage-bootstrap-authentication": "true",
                "usage-bootstrap-signing": "false",
                "auth-extra-groups": TOKEN_GROUP,
            },
        })
    }
}

/// The label selector (URL-encoded) of `node`'s tokens.
fn node_selector(node: &str) -> String {
    format!("labelSelector={}%3D{node}", NODE_LABEL.replace('/', "%2F"))
}

impl Client {
    /// Creates a bootstrap token for `node` valid for `ttl`.
    pub async fn create_bootstrap_token(
        &self,
        node: &str,
        ttl: std::time::Duration,
    ) -> anyhow::Result<Token> {
        let token = Token::random();
        let expires = (time::OffsetDateTime::now_utc() + ttl)
            .replace_nanosecond(0)
            .expect("0 is a valid nanosecond")
            .format(&time::format_description::well_known::Rfc3339)
            .expect("a UTC time formats");
        let body = serde_json::to_vec(&token.secret_object(node, &expires))?;
        self.request(Method::POST, SECRETS, Some(("application/json", body)))
            .await
            .with_context(|| format!("creating a bootstrap token for {node}"))?;
        Ok(token)
    }

    /// Deletes every bootstrap token clusterctl made for `node`; their Secret names.
    pub async fn delete_bootstrap_tokens(&self, node: &str) -> anyhow::Result<Vec<String>> {
        let names = self.bootstrap_tokens(node).await?;
        for n in &names {
            self.delete(&format!("{SECRETS}/{n}")).await?;
        }
        Ok(names)
    }

    /// The Secret names of `node`'s bootstrap tokens.
    pub async fn bootstrap_tokens(&self, node: &str) -> anyhow::Result<Vec<String>> {
        let list = self
            .get(&format!("{SECRETS}?{}", node_selector(node)))
            .await?;
        Ok(list["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|s| s["type"] == "bootstrap.kubernetes.io/token")
                    .filter_map(|s| s["metadata"]["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The certificate signing requests of `signer` made by `username`.
    pub async fn csrs_of(&self, signer: &str, username: &str) -> anyhow::Result<Vec<Value>> {
        let list = self.get(CSRS).await?;
        Ok(list["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|c| {
                        c["spec"]["signerName"] == signer && c["spec"]["username"] == username
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Approves the CSR `csr` (the object as read), saying why.
    pub async fn approve_csr(&self, csr: &Value, message: &str) -> anyhow::Result<()> {
        let name = csr["metadata"]["name"].as_str().unwrap_or_default();
        let mut obj = csr.clone();
        let mut conditions = obj["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conditions.push(json!({
            "type": "Approved",
            "status": "True",
            "reason": "ClusterctlInventoryMatch",
            "message": message,
        }));
        obj["status"]["conditions"] = json!(conditions);
        let body = serde_json::to_vec(&obj)?;
        self.request(
            Method::PUT,
            &format!("{CSRS}/{name}/approval"),
            Some(("application/json", body)),
        )
        .await
        .with_context(|| format!("approving CSR {name}"))?;
        Ok(())
    }
}

/// Where a CSR stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrState {
    Pending,
    Approved,
    /// Approved and signed: `status.certificate` is set.
    Issued,
    Denied,
    Failed,
}

pub fn csr_state(csr: &Value) -> CsrState {
    let has = |t: &str| {
        csr["status"]["conditions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["type"] == t && c["status"] != "False"))
    };
    if has("Denied") {
        CsrState::Denied
    } else if has("Failed") {
        CsrState::Failed
    } else if csr["status"]["certificate"]
        .as_str()
        .is_some_and(|c| !c.is_empty())
    {
        CsrState::Issued
    } else if has("Approved") {
        CsrState::Approved
    } else {
        CsrState::Pending
    }
}

/// Checks a kubelet-serving CSR against what the inventory says of `node` (its name and
/// address): the signer, the requesting user, subject `system:node:<node>` in
/// `system:nodes`, server-auth usages only, and SANs that are the node's name and address
/// and nothing else. Ok with a one-line description, Err with every mismatch: clusterctl
/// approves nothing it did not expect.
pub fn check_serving_csr(csr: &Value, node: &str, ips: &[IpAddr]) -> Result<String, String> {
    let mut bad = Vec::new();
    let user = format!("system:node:{node}");
    let spec = &csr["spec"];
    if spec["signerName"] != SERVING_SIGNER {
        bad.push(format!(
            "signer {} is not {SERVING_SIGNER}",
            spec["signerName"]
        ));
    }
    if spec["username"] != user.as_str() {
        bad.push(format!(
            "requested by {} instead of {user}",
            spec["username"]
        ));
    }
    let allowed = ["digital signature", "key encipherment", "server auth"];
    let usages: Vec<&str> = spec["usages"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !usages.contains(&"server auth") {
        bad.push("no server auth usage".into());
    }
    for u in usages.iter().filter(|u| !allowed.contains(u)) {
        bad.push(format!(
            "usage {u:?} is not for a kubelet's serving certificate"
        ));
    }
    let mut sans = Vec::new();
    match parse_request(spec["request"].as_str().unwrap_or_default()) {
        Err(e) => bad.push(e),
        Ok(req) => {
            if req.common_names != [user.clone()] {
                bad.push(format!("subject CN {:?} is not {user}", req.common_names));
            }
            if req.organizations != ["system:nodes"] {
                bad.push(format!(
                    "subject O {:?} is not [\"system:nodes\"]",
                    req.organizations
                ));
            }
            for d in &req.dns {
                if d != node {
                    bad.push(format!("DNS name {d} is not the node's name {node}"));
                }
            }
            for ip in &req.ips {
                if !ips.contains(ip) {
                    bad.push(format!(
                        "IP {ip} is not an address of {node} in the inventory"
                    ));
                }
            }
            bad.extend(req.other.iter().map(|o| format!("unexpected SAN {o}")));
            if req.dns.is_empty() && req.ips.is_empty() {
                bad.push("no DNS name or IP address".into());
            }
            sans.extend(req.dns.iter().map(|d| format!("DNS:{d}")));
            sans.extend(req.ips.iter().map(|i| format!("IP:{i}")));
        }
    }
    if bad.is_empty() {
        Ok(format!("{user}, {}", sans.join(", ")))
    } else {
        Err(bad.join("; "))
    }
}

#[derive(Debug, Default)]
struct Request {
    common_names: Vec<String>,
    organizations: Vec<String>,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    other: Vec<String>,
}

/// `spec.request` (base64 of a PEM `CERTIFICATE REQUEST`) parsed into what the check needs.
fn parse_request(b64: &str) -> Result<Request, String> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer as _;
    let pem_bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("request is not base64: {e}"))?;
    let p = pem::parse(&pem_bytes).map_err(|e| format!("request is not PEM: {e}"))?;
    if p.tag() != "CERTIFICATE REQUEST" {
        return Err(format!("request is a PEM {}", p.tag()));
    }
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(p.contents())
            .map_err(|e| format!("request is no CSR: {e}"))?;
    let info = &csr.certification_request_info;
    let strs = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.map(|a| a.as_str().unwrap_or("<not a string>").to_string())
            .collect::<Vec<_>>()
    };
    let mut r = Request {
        common_names: strs(&mut info.subject.iter_common_name()),
        organizations: strs(&mut info.subject.iter_organization()),
        ..Request::default()
    };
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for n in &san.general_names {
                match n {
                    GeneralName::DNSName(d) => r.dns.push(d.to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => r.ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap())),
                        16 => r.ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap())),
                        _ => r.other.push(format!("IP of {} bytes", b.len())),
                    },
                    other => r.other.push(format!("{other:?}")),
                }
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CSR as the kubelet of `node` makes it, with these SANs.
    fn csr(user: &str, cn: &str, dns: &[&str], ips: &[&str], usages: &[&str]) -> Value {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        for d in dns {
            p.subject_alt_names
                .push(rcgen::SanType::DnsName((*d).try_into().unwrap()));
        }
        for i in ips {
            p.subject_alt_names
                .push(rcgen::SanType::IpAddress(i.parse().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = p.serialize_request(&key).unwrap().pem().unwrap();
        json!({
            "metadata": {"name": "csr-x"},
            "spec": {
                "signerName": SERVING_SIGNER,
                "username": user,
                "usages": usages,
                "request": base64::engine::general_purpose::STANDARD.encode(pem),
            }
        })
    }

    const SERVING: &[&str] = &["digital signature", "key encipherment", "server auth"];

    #[test]
    fn the_kubelets_own_request_passes() {
        let ip: IpAddr = "10.77.0.16".parse().unwrap();
        let c = csr(
            "system:node:h6",
            "system:node:h6",
            &["h6"],
            &["10.77.0.16"],
            SERVING,
        );
        assert_eq!(
            check_serving_csr(&c, "h6", &[ip]).unwrap(),
            "system:node:h6, DNS:h6, IP:10.77.0.16"
        );
    }

    #[test]
    fn a_foreign_name_address_user_or_usage_is_refused() {
        let ip: IpAddr = "10.77.0.16".parse().unwrap();
        let cases = [
            (
                csr(
                    "system:node:h6",
                    "system:node:h6",
                    &["h6", "api.example.com"],
                    &[],
                    SERVING,
                ),
                "DNS name api.example.com",
            ),
            (
                csr(
                    "system:node:h6",
                    "system:node:h6",
                    &["h6"],
                    &["10.77.0.11"],
                    SERVING,
                ),
                "IP 10.77.0.11 is not an address of h6",
            ),
            (
                csr("system:node:h5", "system:node:h6", &["h6"], &[], SERVING),
                "requested by \"system:node:h5\"",
            ),
            (
                csr("system:node:h6", "system:node:h5", &["h6"], &[], SERVING),
                "subject CN",
            ),
            (
                csr(
                    "system:node:h6",
                    "system:node:h6",
                    &["h6"],
                    &[],
                    &["digital signature", "server auth", "client auth"],
                ),
                "usage \"client auth\"",
            ),
            (
                csr("system:node:h6", "system:node:h6", &[], &[], SERVING),
                "no DNS name or IP address",
            ),
        ];
        for (c, want) in cases {
            let e = check_serving_csr(&c, "h6", &[ip]).unwrap_err();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
        let mut wrong_signer = csr("system:node:h6", "system:node:h6", &["h6"], &[], SERVING);
        wrong_signer["spec"]["signerName"] = json!("kubernetes.io/kube-apiserver-client");
        assert!(check_serving_csr(&wrong_signer, "h6", &[ip]).is_err());
    }

    #[test]
    fn states_follow_the_conditions_and_the_certificate() {
        let mut c = json!({"status": {}});
        assert_eq!(csr_state(&c), CsrState::Pending);
        c["status"]["conditions"] = json!([{"type": "Approved", "status": "True"}]);
        assert_eq!(csr_state(&c), CsrState::Approved);
        c["status"]["certificate"] = json!("LS0t");
        assert_eq!(csr_state(&c), CsrState::Issued);
        c["status"]["conditions"] = json!([{"type": "Denied", "status": "True"}]);
        assert_eq!(csr_state(&c), CsrState::Denied);
    }

    #[test]
    fn tokens_have_the_apiservers_format_and_kubeadms_secret_shape() {
        let t = Token::random();
        assert_eq!(t.id.len(), 6);
        assert_eq!(t.secret.len(), 16);
        assert!(
            t.value()
                .chars()
                .all(|c| c == '.' || c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        let s = t.secret_object("h6", "2026-12-05T13:00:00Z");
        assert_eq!(s["metadata"]["name"], format!("bootstrap-token-{}", t.id));
        assert_eq!(s["type"], "bootstrap.kubernetes.io/token");
        assert_eq!(s["stringData"]["usage-bootstrap-authentication"], "true");
        assert_eq!(s["stringData"]["auth-extra-groups"], TOKEN_GROUP);
        assert_eq!(s["metadata"]["labels"][NODE_LABEL], "h6");
        assert_eq!(
            node_selector("h6"),
            "labelSelector=clusterctl.io%2Fbootstrap-node%3Dh6"
        );
    }
}
