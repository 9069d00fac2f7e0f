//! A small Kubernetes API client over reqwest, for the work phases do through the API once the
//! control plane runs: server-side apply of manifests (add-ons), node listing and labels,
//! Deployment status. No kube-rs: a handful of REST calls, JSON in and out.
//!
//! - [`Client`]: GET/PATCH/DELETE with errors that carry the HTTP status and the API's
//!   `Status.message`;
//! - [`discovery`]: (apiVersion, kind) -> resource path, read from the API once per run;
//! - [`manifest`]: multi-document YAML -> objects in apply order;
//! - [`apply`]: server-side apply of one object or a manifest, reporting what changed;
//! - [`bootstrap`]: bootstrap tokens and kubelet serving CSRs (TLS-bootstrap workers);
//! - [`nodes`]: nodes with their Ready condition, label patches, Deployment availability;
//! - [`wait_until`]: poll a check until it is done or a timeout passes.

pub mod apply;
pub mod bootstrap;
pub mod discovery;
pub mod http;
pub mod manifest;
pub mod nodes;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use reqwest::Method;
use serde_json::Value;

pub use apply::{Applied, Change, Summary};
pub use discovery::ApiResource;
pub use manifest::Object;
pub use nodes::{DeploymentStatus, Node};

/// The field manager clusterctl applies as (shown in `metadata.managedFields`).
pub const FIELD_MANAGER: &str = "clusterctl";

/// An error answer of the API server: status code and the `Status` object's message/reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{method} {path}: HTTP {status}{}: {message}", reason_suffix(.reason))]
pub struct ApiError {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// `Status.reason`, e.g. `NotFound`, `Invalid`, `Forbidden` (empty when the body was not
    /// a Status).
    pub reason: String,
    /// `Status.message`, or the body's text when it was not a Status.
    pub message: String,
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    }
}

impl ApiError {
    fn from_body(method: &Method, path: &str, status: u16, body: &str) -> ApiError {
        let v: Option<Value> = serde_json::from_str(body).ok();
        let field = |k: &str| {
            v.as_ref()
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let mut message = field("message");
        if message.is_empty() {
            message = body.trim().chars().take(500).collect();
        }
        ApiError {
            method: method.to_string(),
            path: path.to_string(),
            status,
            reason: field("reason"),
            message,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status == 404
    }
}

/// Is `e` (anywhere in its chain) an API answer 404?
pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<ApiError>()
            .is_some_and(ApiError::is_not_found)
    })
}

/// The API server URLs (`https://host:port`) the operator's machine uses, in the order it
/// tries them: the cluster endpoint (the VIP, the external endpoint, or in local-proxy mode the
/// first control-plane host's apiserver), then in local-proxy mode, where no balancer stands
/// between this machine and the apiservers, every other control-plane host's apiserver. So
/// clusterctl still reaches the API when the first control-plane host is down.
pub fn operator_endpoints(inv: &crate::inventory::Inventory) -> Vec<String> {
    let (host, port) = inv.apiserver_endpoint_for_admin();
    let mut v = vec![crate::inventory::Inventory::url(&host, port)];
    if inv.spec.ha.mode == crate::inventory::HaMode::LocalProxy {
        for h in inv.control_plane_hosts() {
            let u =
                crate::inventory::Inventory::url(h.address, inv.spec.control_plane.apiserver_port);
            if !v.contains(&u) {
                v.push(u);
            }
        }
    }
    v
}

/// The first of `bases` whose `/readyz` answers 200 with `http`: (its base, the answer), else
/// the last error seen, naming each base tried.
pub async fn first_ready(
    http: &reqwest::Client,
    bases: &[String],
) -> Result<(String, String), String> {
    let mut errors = Vec::new();
    for b in bases {
        let url = format!("{b}/readyz");
        match crate::kube::http::send(http.get(&url), &url).await {
            Ok(s) => return Ok((b.clone(), s.body)),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    Err(errors.join("; "))
}

/// A client for one cluster's API. Cheap to share by reference; caches discovery. It knows
/// every apiserver URL it may use ([`operator_endpoints`]) and goes on to the next when one
/// cannot be reached, keeping the one that answered.
pub struct Client {
    http: reqwest::Client,
    /// `https://host:port` without a trailing slash, in the order to try.
    bases: Vec<String>,
    /// The index in `bases` that answered last.
    current: std::sync::atomic::AtomicUsize,
    discovery: Mutex<HashMap<String, Arc<Vec<ApiResource>>>>,
}

impl Client {
    /// `http` must already trust the cluster CA and present a client identity (see
    /// [`admin_http`]); `base` is `https://host:port`.
    pub fn new(http: reqwest::Client, base: impl Into<String>) -> Client {
        Client::with_failover(http, vec![base.into()])
    }

    /// A client that tries `bases` in turn (see [`Client`]).
    pub fn with_failover(http: reqwest::Client, bases: Vec<String>) -> Client {
        Client {
            http,
            bases: bases
                .into_iter()
                .map(|b| b.trim_end_matches('/').to_string())
                .collect(),
            current: std::sync::atomic::AtomicUsize::new(0),
            discovery: Mutex::new(HashMap::new()),
        }
    }

    /// The cluster of a run, as its admin (`clusters/<name>/kubeconfig/admin.conf`), through
    /// the endpoints the operator's machine uses ([`operator_endpoints`]).
    pub fn admin(
        inv: &crate::inventory::Inventory,
        state: &crate::state::StateDir,
    ) -> anyhow::Result<Client> {
        Ok(Client::with_failover(
            admin_http(state)?,
            operator_endpoints(inv),
        ))
    }

    /// The URL in use now.
    pub fn base(&self) -> &str {
        &self.bases[self.current.load(std::sync::atomic::Ordering::Relaxed) % self.bases.len()]
    }

    /// Sends one request; Ok((status, body)) for a 2xx answer, else an [`ApiError`] (or a
    /// transport error naming the URL). The body is the parsed JSON, `Null` when empty, or a
    /// string for a text answer (`/readyz`).
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> anyhow::Result<(u16, Value)> {
        // From the apiserver that answered last, on to the next one that cannot be reached:
        // a refused or timed-out connection never reached an apiserver, so any request may go
        // again elsewhere; a timeout after sending only a read.
        let first = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let mut errors = Vec::new();
        let mut answer = None;
        for k in 0..self.bases.len() {
            let i = (first + k) % self.bases.len();
            let url = format!("{}{}", self.bases[i], path_and_query);
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header("Accept", "application/json");
            if let Some((content_type, bytes)) = &body {
                req = req
                    .header("Content-Type", *content_type)
                    .body(bytes.clone());
            }
            match req.send().await {
                Ok(r) => {
                    self.current.store(i, std::sync::atomic::Ordering::Relaxed);
                    answer = Some((url, r));
                    break;
                }
                Err(e) => {
                    let again = e.is_connect() || (e.is_timeout() && method == Method::GET);
                    errors.push(format!(
                        "{method} {url}: {}",
                        crate::kube::http::error_chain(&e)
                    ));
                    if !again {
                        break;
                    }
                }
            }
        }
        let Some((url, resp)) = answer else {
            anyhow::bail!("{}", errors.join("; "));
        };
        let status = resp.status().as_u16();
        let is_json = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let text = resp
            .text()
            .await
            .with_context(|| format!("{method} {url}: reading the answer"))?;
        let path = path_and_query.split('?').next().unwrap_or(path_and_query);
        if !(200..300).contains(&status) {
            return Err(ApiError::from_body(&method, path, status, &text).into());
        }
        let v = if text.trim().is_empty() {
            Value::Null
        } else if is_json {
            serde_json::from_str(&text)
                .with_context(|| format!("{method} {path}: the answer is not valid JSON"))?
        } else {
            // Plain-text endpoints (/readyz, /healthz, /livez).
            Value::String(text)
        };
        Ok((status, v))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.request(Method::GET, path, None).await?.1)
    }

    /// Like [`Client::get`], with `None` for a 404.
    pub async fn get_opt(&self, path: &str) -> anyhow::Result<Option<Value>> {
        match self.get(path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// PATCH with a body of the given content type (`application/merge-patch+json`,
    /// `application/apply-patch+yaml`, ...).
    pub async fn patch(
        &self,
        path_and_query: &str,
        content_type: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let bytes = serde_json::to_vec(body).expect("JSON values serialize");
        self.request(Method::PATCH, path_and_query, Some((content_type, bytes)))
            .await
    }

    /// A JSON merge patch (RFC 7386): maps merge, `null` removes a key.
    pub async fn merge_patch(&self, path: &str, patch: &Value) -> anyhow::Result<Value> {
        Ok(self
            .patch(path, "application/merge-patch+json", patch)
            .await?
            .1)
    }

    /// DELETE; Ok(false) when the object was already gone.
    pub async fn delete(&self, path: &str) -> anyhow::Result<bool> {
        match self.request(Method::DELETE, path, None).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// What a [`wait_until`] check found.
pub enum Wait<T> {
    Done(T),
    /// Not yet, with what was seen (reported if the wait times out).
    Pending(String),
}

/// Runs `check` every `poll` until it says [`Wait::Done`] or `timeout` passes. A check that
/// errs counts as pending (the API may be restarting); the last state seen explains a timeout.
pub async fn wait_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Wait<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = String::new();
    loop {
        let last = match check().await {
            Ok(Wait::Done(t)) => {
                tracing::debug!(gate = what, "done");
                return Ok(t);
            }
            Ok(Wait::Pending(s)) => s,
            Err(e) => format!("{e:#}"),
        };
        // Each new state once (`-vv`): when a gate's condition turned, and through what.
        if last != seen {
            tracing::debug!(gate = what, state = %last, "pending");
            seen.clone_from(&last);
        }
        if tokio::time::Instant::now() + poll > deadline {
            anyhow::bail!("{what}: not done after {} s: {last}", timeout.as_secs());
        }
        tokio::time::sleep(poll).await;
    }
}

/// An HTTPS client with the admin identity of `clusters/<name>/kubeconfig/admin.conf`.
pub fn admin_http(state: &crate::state::StateDir) -> anyhow::Result<reqwest::Client> {
    let path = state.root.join("kubeconfig/admin.conf");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let kc = crate::pki::kubeconfig::Kubeconfig::from_yaml(&text, &path.display().to_string())?;
    let need = |v: Option<String>, what: &str| {
        v.ok_or_else(|| anyhow::anyhow!("{}: no {what}", path.display()))
    };
    http::client(
        need(kc.ca_pem()?, "CA")?.as_bytes(),
        need(kc.client_cert_pem()?, "client certificate")?.as_bytes(),
        need(kc.client_key_pem()?, "client key")?.as_bytes(),
        Duration::from_secs(5),
    )
}

/// `https://<host>:<apiserver port>/readyz`
pub fn readyz_url(inv: &crate::inventory::Inventory, host: &crate::inventory::Host) -> String {
    format!(
        "{}/readyz",
        crate::inventory::Inventory::url(host.address, inv.spec.control_plane.apiserver_port)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_carry_status_reason_and_message() {
        let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"Deployment.apps \"coredns\" is invalid: spec.replicas: Invalid value: -1","reason":"Invalid","code":422}"#;
        let e = ApiError::from_body(
            &Method::PATCH,
            "/apis/apps/v1/namespaces/kube-system/deployments/coredns",
            422,
            body,
        );
        assert_eq!(
            e.to_string(),
            "PATCH /apis/apps/v1/namespaces/kube-system/deployments/coredns: HTTP 422 (Invalid): Deployment.apps \"coredns\" is invalid: spec.replicas: Invalid value: -1"
        );
        let plain = ApiError::from_body(&Method::GET, "/x", 503, "  service unavailable\n");
        assert_eq!(plain.to_string(), "GET /x: HTTP 503: service unavailable");
        assert!(is_not_found(&anyhow::Error::from(ApiError::from_body(
            &Method::GET,
            "/x",
            404,
            "{}"
        ))));
    }

    #[tokio::test]
    async fn wait_until_returns_when_done_and_explains_a_timeout() {
        let mut n = 0;
        let v = wait_until(
            "count",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                n += 1;
                let k = n;
                async move {
                    Ok(if k >= 3 {
                        Wait::Done(k)
                    } else {
                        Wait::Pending(format!("at {k}"))
                    })
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(v, 3);
        let e = wait_until::<(), _, _>(
            "never",
            Duration::from_millis(30),
            Duration::from_millis(10),
            || async { Ok(Wait::Pending("0/2 available".into())) },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("never: not done after 0 s: 0/2 available"),
            "{e}"
        );
    }
}
