//! Kubeconfig files with embedded (base64) certificates, serialized with serde-saphyr.

use anyhow::{Context, Result, anyhow};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Kubeconfig {
    pub api_version: String,
    pub kind: String,
    pub clusters: Vec<NamedCluster>,
    pub contexts: Vec<NamedContext>,
    #[serde(rename = "current-context")]
    pub current_context: String,
    pub users: Vec<NamedUser>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NamedCluster {
    pub name: String,
    pub cluster: Cluster,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Cluster {
    pub certificate_authority_data: String,
    pub server: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NamedContext {
    pub name: String,
    pub context: Context_,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Context_ {
    pub cluster: String,
    pub user: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NamedUser {
    pub name: String,
    pub user: User,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "kebab-case")]
pub struct User {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_data: Option<String>,
    /// A bearer token (a bootstrap kubeconfig's `<id>.<secret>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl Kubeconfig {
    /// A kubeconfig for one user of one cluster; PEM inputs are embedded base64-encoded.
    pub fn new(
        cluster: &str,
        server: &str,
        ca_pem: &str,
        user: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Kubeconfig {
        let ctx = format!("{user}@{cluster}");
        Kubeconfig {
            api_version: "v1".into(),
            kind: "Config".into(),
            clusters: vec![NamedCluster {
                name: cluster.into(),
                cluster: Cluster {
                    certificate_authority_data: STANDARD.encode(ca_pem),
                    server: server.into(),
                },
            }],
            contexts: vec![NamedContext {
                name: ctx.clone(),
                context: Context_ {
                    cluster: cluster.into(),
                    user: user.into(),
                },
            }],
            current_context: ctx,
            users: vec![NamedUser {
                name: user.into(),
                user: User {
                    client_certificate_data: Some(STANDARD.encode(cert_pem)),
                    client_key_data: Some(STANDARD.encode(key_pem)),
                    token: None,
                },
            }],
        }
    }

    /// A kubelet's bootstrap kubeconfig: the cluster CA and a bootstrap token, no key.
    pub fn bootstrap(cluster: &str, server: &str, ca_pem: &str, token: &str) -> Kubeconfig {
        let mut k = Kubeconfig::new(cluster, server, ca_pem, "kubelet-bootstrap", "", "");
        k.users[0].user = User {
            token: Some(token.into()),
            ..User::default()
        };
        k
    }

    pub fn to_yaml(&self) -> Result<String> {
        // Plain scalars: base64 data stays on one line, as kubectl writes it.
        let mut o = serde_saphyr::SerializerOptions::default();
        o.prefer_block_scalars = false;
        serde_saphyr::to_string_with_options(self, o)
            .map_err(|e| anyhow!("serializing a kubeconfig: {e}"))
    }

    pub fn from_yaml(text: &str, what: &str) -> Result<Kubeconfig> {
        serde_saphyr::from_str(text).map_err(|e| anyhow!("{what}: not a kubeconfig: {e}"))
    }

    /// The current context's user (else the first user).
    fn current_user(&self) -> Option<&User> {
        let user = self
            .contexts
            .iter()
            .find(|c| c.name == self.current_context)
            .map(|c| c.context.user.as_str());
        match user {
            Some(u) => self.users.iter().find(|n| n.name == u),
            None => self.users.first(),
        }
        .map(|n| &n.user)
    }

    /// The current context's cluster (else the first cluster).
    pub fn current_cluster(&self) -> Option<&Cluster> {
        let name = self
            .contexts
            .iter()
            .find(|c| c.name == self.current_context)
            .map(|c| c.context.cluster.as_str());
        match name {
            Some(n) => self.clusters.iter().find(|c| c.name == n),
            None => self.clusters.first(),
        }
        .map(|c| &c.cluster)
    }

    /// Decoded client certificate PEM, if embedded.
    pub fn client_cert_pem(&self) -> Result<Option<String>> {
        decode(
            self.current_user()
                .and_then(|u| u.client_certificate_data.as_deref()),
        )
    }

    pub fn client_key_pem(&self) -> Result<Option<String>> {
        decode(
            self.current_user()
                .and_then(|u| u.client_key_data.as_deref()),
        )
    }

    pub fn ca_pem(&self) -> Result<Option<String>> {
        decode(
            self.current_cluster()
                .map(|c| c.certificate_authority_data.as_str()),
        )
    }
}

fn decode(data: Option<&str>) -> Result<Option<String>> {
    let Some(d) = data else { return Ok(None) };
    let bytes = STANDARD
        .decode(d.trim())
        .context("embedded data is not base64")?;
    Ok(Some(
        String::from_utf8(bytes).context("embedded data is not PEM text")?,
    ))
}
