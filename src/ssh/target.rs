//! `Target`: everything needed to reach one host, resolved from the inventory (host fields
//! override `spec.ssh` defaults; bastions by name from `spec.ssh.bastions`).

use std::path::PathBuf;
use std::time::Duration;

use crate::inventory::{KnownHostsPolicy, Loaded};
use crate::state::StateDir;

#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Host name in the inventory (bastions: the bastion's name).
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    /// Private key file; None: the agent and/or the default `~/.ssh/id_*` files.
    pub key_file: Option<PathBuf>,
    /// Environment variable holding the key's passphrase.
    pub passphrase_env: Option<String>,
    pub agent: bool,
    pub known_hosts: KnownHostsPolicy,
    /// Files checked for the host key, in order.
    pub known_hosts_files: Vec<PathBuf>,
    /// Where `accept-new` pins keys: the cluster's own known_hosts.
    pub pin_file: PathBuf,
    pub bastion: Option<Box<Target>>,
    /// Privileged commands go through `sudo -n` (always when `user` is not root).
    pub sudo: bool,
    pub connect_timeout: Duration,
}

impl Target {
    /// `address:port`, with brackets for IPv6.
    pub fn endpoint(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }

    /// `address:port via bastion NAME (address:port)` for messages.
    pub fn describe(&self) -> String {
        match &self.bastion {
            Some(b) => format!(
                "{} via bastion {} ({})",
                self.endpoint(),
                b.name,
                b.endpoint()
            ),
            None => self.endpoint(),
        }
    }

    /// One target per inventory host, in inventory order. Unknown bastion names are caught by
    /// validation; here they fall back to a direct connection.
    pub fn from_inventory(loaded: &Loaded, state: &StateDir) -> Vec<Target> {
        let ssh = &loaded.inventory.spec.ssh;
        let pin_file = state.known_hosts();
        let mut files = Vec::new();
        match &ssh.known_hosts_file {
            Some(f) => files.push(loaded.resolve(f)),
            None => {
                if let Some(home) = std::env::var_os("HOME") {
                    files.push(PathBuf::from(home).join(".ssh/known_hosts"));
                }
            }
        }
        if !files.contains(&pin_file) {
            files.push(pin_file.clone());
        }
        let default_key = ssh.key_file.as_ref().map(|k| loaded.resolve(k));
        let base = |name: &str, address: &str| Target {
            name: name.to_string(),
            address: address.to_string(),
            port: ssh.port,
            user: ssh.user.to_string(),
            key_file: default_key.clone(),
            passphrase_env: ssh.passphrase_env.as_ref().map(|e| e.to_string()),
            agent: ssh.agent,
            known_hosts: ssh.known_hosts,
            known_hosts_files: files.clone(),
            pin_file: pin_file.clone(),
            bastion: None,
            sudo: ssh.sudo,
            connect_timeout: ssh.connect_timeout,
        };
        let bastion = |name: &str| -> Option<Box<Target>> {
            let b = ssh.bastions.iter().find(|b| b.name == name)?;
            let mut t = base(&b.name, &b.address);
            if let Some(p) = b.port {
                t.port = p;
            }
            if let Some(u) = &b.user {
                t.user = u.to_string();
            }
            if let Some(k) = &b.key_file {
                t.key_file = Some(loaded.resolve(k));
            }
            t.sudo = false;
            Some(Box::new(t))
        };
        loaded
            .inventory
            .spec
            .hosts
            .iter()
            .map(|h| {
                let mut t = base(&h.name, &h.address.to_string());
                if let Some(p) = h.port {
                    t.port = p;
                }
                if let Some(u) = &h.user {
                    t.user = u.to_string();
                }
                if let Some(k) = &h.key_file {
                    t.key_file = Some(loaded.resolve(k));
                }
                t.sudo = t.sudo || t.user != "root";
                if let Some(name) = h.bastion.as_ref().or(ssh.bastion.as_ref()) {
                    t.bastion = bastion(name);
                }
                t
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The inventory as parsed, without the checks that need its key files to exist (the
    /// paths here are only resolved, never read).
    fn load_str(text: &str, path: &Path) -> Result<crate::inventory::Loaded, String> {
        let inventory = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        Ok(crate::inventory::Loaded {
            inventory,
            path: path.to_path_buf(),
            source_map: crate::inventory::source_map::SourceMap::default(),
            warnings: Default::default(),
        })
    }

    const INV: &str = r#"
apiVersion: clusterctl.io/v1alpha1
kind: Cluster
metadata: { name: t }
spec:
  kubernetesVersion: v1.20.2
  ssh:
    user: admin
    port: 2200
    keyFile: keys/id_ed25519
    passphraseEnv: KEY_PASS
    knownHosts: accept-new
    knownHostsFile: kh
    bastion: jump
    bastions:
      - { name: jump, address: 192.0.2.1, user: jumper, keyFile: /abs/jump_key }
      - { name: other, address: 192.0.2.2, port: 22 }
    connectTimeoutSecs: 3
  hosts:
    - { name: a, address: 10.0.0.1, roles: [etcd, control-plane] }
    - { name: b, address: 10.0.0.2, user: root, port: 22, keyFile: /k/b, bastion: other, roles: [worker] }
"#;

    #[test]
    fn host_fields_override_defaults_and_bastions_resolve() {
        let loaded = load_str(INV, Path::new("/inv/cluster.yaml")).expect("valid inventory");
        let state = StateDir::new(Path::new("/inv"), "t");
        let t = Target::from_inventory(&loaded, &state);
        assert_eq!(t.len(), 2);
        let a = &t[0];
        assert_eq!((a.user.as_str(), a.port), ("admin", 2200));
        assert_eq!(
            a.key_file.as_deref(),
            Some(Path::new("/inv/keys/id_ed25519"))
        );
        assert_eq!(a.passphrase_env.as_deref(), Some("KEY_PASS"));
        assert_eq!(a.known_hosts, KnownHostsPolicy::AcceptNew);
        assert_eq!(
            a.known_hosts_files,
            vec![
                PathBuf::from("/inv/kh"),
                PathBuf::from("/inv/clusters/t/known_hosts")
            ]
        );
        assert_eq!(a.pin_file, PathBuf::from("/inv/clusters/t/known_hosts"));
        assert!(a.sudo, "non-root user implies sudo");
        assert_eq!(a.connect_timeout, Duration::from_secs(3));
        let j = a.bastion.as_ref().expect("default bastion");
        assert_eq!(
            (j.name.as_str(), j.address.as_str(), j.user.as_str(), j.port),
            ("jump", "192.0.2.1", "jumper", 2200)
        );
        assert_eq!(j.key_file.as_deref(), Some(Path::new("/abs/jump_key")));
        assert_eq!(
            a.describe(),
            "10.0.0.1:2200 via bastion jump (192.0.2.1:2200)"
        );

        let b = &t[1];
        assert_eq!((b.user.as_str(), b.port), ("root", 22));
        assert_eq!(b.key_file.as_deref(), Some(Path::new("/k/b")));
        assert!(!b.sudo);
        assert_eq!(b.bastion.as_ref().unwrap().endpoint(), "192.0.2.2:22");
    }

    #[test]
    fn ipv6_endpoint_has_brackets() {
        let loaded = load_str(INV, Path::new("/inv/cluster.yaml")).unwrap();
        let mut t =
            Target::from_inventory(&loaded, &StateDir::new(Path::new("/inv"), "t")).remove(0);
        t.address = "fd00::1".into();
        assert_eq!(t.endpoint(), "[fd00::1]:2200");
    }
}
