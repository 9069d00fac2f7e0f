//! `clusterctl kubeconfig`: the cluster's admin kubeconfig, printed or merged into the user's
//! kubeconfig. Merging works on the file as generic YAML, so whatever it holds that clusterctl
//! does not know (exec and auth-provider users, tokens, extensions, preferences, other clusters)
//! is written back as it was; only the entries named like ours are replaced.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use clap::Args;
use serde_json::Value;

use crate::commands::{Global, load_inventory, state_dir};
use crate::diag::UserError;

#[derive(Args, Debug, Clone)]
pub struct KubeconfigArgs {
    /// Merge into the kubeconfig kubectl uses ($KUBECONFIG's first file, else ~/.kube/config)
    /// instead of printing; the old file is kept beside it as `<file>.bak-<time>`.
    #[arg(long)]
    pub merge: bool,
    /// Name of the context (and of its cluster and user entries); default: the cluster's name.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// The kubeconfig to merge into (overrides $KUBECONFIG and ~/.kube/config).
    #[arg(long, requires = "merge")]
    pub file: Option<PathBuf>,
}

pub fn run(g: &Global, a: &KubeconfigArgs) -> anyhow::Result<()> {
    let loaded = load_inventory(g)?;
    let state = state_dir(g, &loaded);
    let admin = state.admin_kubeconfig();
    let text = std::fs::read_to_string(&admin).map_err(|e| {
        UserError::failed(format!(
            "no admin kubeconfig at {} ({e}): run `clusterctl init` first",
            admin.display()
        ))
    })?;
    let name = a
        .context
        .clone()
        .unwrap_or_else(|| loaded.inventory.name().to_string());
    let ours = renamed(parse(&text, &admin)?, &name)?;
    if !a.merge {
        print!("{}", to_yaml(&ours)?);
        return Ok(());
    }
    let target = match &a.file {
        Some(f) => f.clone(),
        None => default_target()?,
    };
    let outcome = merge_into_file(&target, &ours, &name)?;
    eprintln!("{outcome}");
    Ok(())
}

/// `$KUBECONFIG`'s first file (kubectl writes new entries there), else `~/.kube/config`.
fn default_target() -> anyhow::Result<PathBuf> {
    if let Some(k) = std::env::var_os("KUBECONFIG")
        && let Some(first) = std::env::split_paths(&k).find(|p| !p.as_os_str().is_empty())
    {
        return Ok(first);
    }
    let home = std::env::var_os("HOME").ok_or_else(|| {
        UserError::bad_input("neither KUBECONFIG nor HOME is set: pass --file".to_string())
    })?;
    Ok(PathBuf::from(home).join(".kube/config"))
}

fn parse(text: &str, path: &Path) -> anyhow::Result<Value> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_saphyr::from_str(text).map_err(|e| {
        UserError::bad_input(format!(
            "{} is not a kubeconfig clusterctl can read ({e}); nothing was changed",
            path.display()
        ))
        .into()
    })
}

fn to_yaml(v: &Value) -> anyhow::Result<String> {
    let mut s = serde_saphyr::to_string(v)?;
    if !s.ends_with('\n') {
        s.push('\n');
    }
    Ok(s)
}

/// The admin kubeconfig with its one cluster, user and context all named after `name` (the user
/// `<name>-admin`), its current context set to it.
fn renamed(mut v: Value, name: &str) -> anyhow::Result<Value> {
    let user = format!("{name}-admin");
    let one = |v: &mut Value, list: &str, new: &str| -> anyhow::Result<()> {
        let items = v
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .filter(|a| a.len() == 1)
            .ok_or_else(|| {
                anyhow!("the admin kubeconfig should have exactly one entry in `{list}`")
            })?;
        items[0]["name"] = Value::String(new.to_string());
        Ok(())
    };
    one(&mut v, "clusters", name)?;
    one(&mut v, "users", &user)?;
    one(&mut v, "contexts", name)?;
    v["contexts"][0]["context"]["cluster"] = Value::String(name.to_string());
    v["contexts"][0]["context"]["user"] = Value::String(user);
    v["current-context"] = Value::String(name.to_string());
    Ok(v)
}

/// Puts `ours`' cluster, user and context into `theirs`: an entry of the same name is replaced,
/// everything else (other entries, unknown keys, preferences, extensions) is kept. The current
/// context becomes ours only when the file had none. Returns whether the current context was set.
pub fn merge(theirs: &mut Value, ours: &Value) -> anyhow::Result<bool> {
    if !theirs.is_object() {
        return Err(anyhow!("the kubeconfig is not a mapping"));
    }
    for list in ["clusters", "users", "contexts"] {
        let new = ours[list].as_array().cloned().unwrap_or_default();
        let slot = theirs
            .as_object_mut()
            .expect("checked above")
            .entry(list)
            .or_insert_with(|| Value::Array(Vec::new()));
        if slot.is_null() {
            *slot = Value::Array(Vec::new());
        }
        let items = slot
            .as_array_mut()
            .ok_or_else(|| anyhow!("`{list}` in the kubeconfig is not a list"))?;
        for n in new {
            match items.iter_mut().find(|i| i.get("name") == n.get("name")) {
                Some(old) => *old = n,
                None => items.push(n),
            }
        }
    }
    for (k, v) in [("apiVersion", "v1"), ("kind", "Config")] {
        if theirs.get(k).is_none_or(Value::is_null) {
            theirs[k] = Value::String(v.into());
        }
    }
    let unset = theirs
        .get("current-context")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    if unset {
        theirs["current-context"] = ours["current-context"].clone();
    }
    Ok(unset)
}

fn merge_into_file(target: &Path, ours: &Value, name: &str) -> anyhow::Result<String> {
    let old = match std::fs::read_to_string(target) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow!("cannot read {}: {e}", target.display())),
    };
    let mut theirs = match &old {
        Some(t) => parse(t, target)?,
        None => Value::Object(Default::default()),
    };
    let switched = merge(&mut theirs, ours)?;
    let dir = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The old file first, byte for byte: nothing the user had can be lost by a merge.
    let backup = match &old {
        Some(t) => {
            let stamp = time::OffsetDateTime::now_utc()
                .format(time::macros::format_description!(
                    "[year][month][day]T[hour][minute][second]Z"
                ))
                .unwrap_or_default();
            let b = PathBuf::from(format!("{}.bak-{stamp}", target.display()));
            write_private(&b, t.as_bytes())?;
            Some(b)
        }
        None => None,
    };
    // Written beside it and renamed: a run killed here leaves the old file or the new one.
    let tmp = dir.join(format!(
        ".{}.clusterctl-{}",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config".into()),
        std::process::id()
    ));
    write_private(&tmp, to_yaml(&theirs)?.as_bytes())?;
    std::fs::rename(&tmp, target)
        .with_context(|| format!("cannot replace {}", target.display()))?;
    let mut msg = format!("merged context `{name}` into {}", target.display());
    if let Some(b) = backup {
        msg.push_str(&format!(" (previous file kept as {})", b.display()));
    }
    if switched {
        msg.push_str(&format!("; current context is now `{name}`"));
    } else {
        msg.push_str(&format!(
            "; current context unchanged: `kubectl config use-context {name}` switches to it"
        ));
    }
    Ok(msg)
}

/// Credentials inside: created 0600, whatever the umask.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster:\n    server: https://10.77.0.10:8443\n    certificate-authority-data: Q0E=\ncontexts:\n- name: admin@prod\n  context: {cluster: prod, user: admin}\ncurrent-context: admin@prod\nusers:\n- name: admin\n  user:\n    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\n";

    const THEIRS: &str = r#"apiVersion: v1
kind: Config
preferences:
  colors: true
current-context: work
clusters:
- name: work
  cluster:
    server: https://work.example:6443
    extensions:
    - name: client.authentication.k8s.io/exec
      extension: {audience: work}
- name: prod
  cluster: {server: https://stale.example:6443}
contexts:
- name: work
  context: {cluster: work, user: oidc, namespace: team-a}
users:
- name: oidc
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: kubectl-oidc_login
      args: [get-token, --oidc-issuer-url=https://issuer.example]
      env: null
      interactiveMode: IfAvailable
- name: robot
  user: {token: abc.def.ghi}
extensions:
- name: some-tool
  extension: {keep: me}
"#;

    #[test]
    fn merging_keeps_everything_else_and_replaces_only_our_entries() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kube/config");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, THEIRS).unwrap();
        let ours = renamed(serde_saphyr::from_str(ADMIN).unwrap(), "prod").unwrap();
        let msg = merge_into_file(&file, &ours, "prod").unwrap();
        assert!(msg.contains("current context unchanged"), "{msg}");

        let before: Value = serde_saphyr::from_str(THEIRS).unwrap();
        let after: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        // Everything the user had, unknown keys included, is still there unchanged.
        for key in ["preferences", "extensions", "current-context"] {
            assert_eq!(after[key], before[key], "{key}");
        }
        assert_eq!(after["users"][0], before["users"][0], "exec user");
        assert_eq!(after["users"][1], before["users"][1], "token user");
        assert_eq!(
            after["clusters"][0], before["clusters"][0],
            "extensions kept"
        );
        assert_eq!(after["contexts"][0], before["contexts"][0]);
        // Ours replaced the stale entry of the same name and was added once.
        let clusters = after["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 2);
        assert_eq!(clusters[1]["cluster"]["server"], "https://10.77.0.10:8443");
        assert_eq!(after["users"].as_array().unwrap().len(), 3);
        assert_eq!(after["users"][2]["name"], "prod-admin");
        assert_eq!(after["contexts"][1]["context"]["user"], "prod-admin");
        // The old file byte for byte, private.
        let backups: Vec<_> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("config.bak-"))
            .collect();
        assert_eq!(backups.len(), 1);
        assert_eq!(std::fs::read_to_string(backups[0].path()).unwrap(), THEIRS);
        use std::os::unix::fs::PermissionsExt as _;
        for p in [file.clone(), backups[0].path()] {
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        // Merging again changes nothing.
        merge_into_file(&file, &ours, "prod").unwrap();
        let again: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(again, after);
    }

    #[test]
    fn an_absent_file_gets_our_context_as_current() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config");
        let ours = renamed(serde_saphyr::from_str(ADMIN).unwrap(), "lab").unwrap();
        let msg = merge_into_file(&file, &ours, "lab").unwrap();
        assert!(msg.contains("current context is now `lab`"), "{msg}");
        let v: Value = serde_saphyr::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(v["current-context"], "lab");
        assert_eq!(v["contexts"][0]["context"]["cluster"], "lab");
    }
}
