//! Building remote shell commands: POSIX quoting, `sudo -n` wrapping, the upload script.

/// Quotes `s` for a POSIX shell: bare when it is made only of safe characters, else in single
/// quotes with embedded `'` as `'\''`.
pub fn quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A remote command as a program and its arguments: every argument is quoted when the
/// command is written out, so a value (from the inventory, a bundle manifest, an archive)
/// reaches the remote shell as exactly one word, whatever it holds. Shell syntax can be added
/// only as `&'static str` fragments ([`Cmd::raw`]), i.e. text written in clusterctl's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    words: Vec<Word>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    Arg(String),
    Raw(&'static str),
}

impl Cmd {
    pub fn new(program: &str) -> Cmd {
        Cmd {
            words: vec![Word::Arg(program.to_string())],
        }
    }
    /// One argument, quoted.
    pub fn arg(mut self, a: impl AsRef<str>) -> Cmd {
        self.words.push(Word::Arg(a.as_ref().to_string()));
        self
    }
    /// Each item one quoted argument.
    pub fn args<I, S>(mut self, items: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.words
            .extend(items.into_iter().map(|a| Word::Arg(a.as_ref().to_string())));
        self
    }
    /// Shell syntax written in clusterctl's source (`2>/dev/null`, `>/dev/null`): never a value.
    pub fn raw(mut self, fragment: &'static str) -> Cmd {
        self.words.push(Word::Raw(fragment));
        self
    }
    /// `self && next`
    pub fn and(self, next: &Cmd) -> String {
        format!("{self} && {next}")
    }
    /// `! self`: succeeds when the command fails.
    pub fn negated(&self) -> String {
        format!("! {self}")
    }
}

impl std::fmt::Display for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, w) in self.words.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            match w {
                Word::Arg(a) => f.write_str(&quote(a))?,
                Word::Raw(r) => f.write_str(r)?,
            }
        }
        Ok(())
    }
}

/// `systemctl VERB UNIT…`, each unit quoted.
pub fn systemctl<S: AsRef<str>>(verb: &[&str], units: impl IntoIterator<Item = S>) -> Cmd {
    Cmd::new("systemctl").args(verb).args(units)
}

/// Runs `cmd` as root: unchanged for root, else through `sudo -n` (never prompts) and `sh -c`
/// so pipes, redirections and `&&` all run privileged.
pub fn as_root(cmd: &str, user: &str) -> String {
    if user == "root" {
        cmd.to_string()
    } else {
        format!("sudo -n -- sh -c {}", quote(cmd))
    }
}

/// `sudo -n` failed because it wants a password (its messages across versions).
pub fn sudo_wants_password(stderr: &str) -> bool {
    stderr.contains("sudo: a password is required")
        || stderr.contains("sudo: a terminal is required")
        || (stderr.contains("sudo:") && stderr.contains("password"))
}

/// Where hosts keep the sha256 of files clusterctl wrote or checked, keyed by the file's size,
/// mtime, ctime and inode (like git's index): a no-op run re-hashes nothing that did not change.
/// Any write, chmod, chown or rename changes the ctime, which the kernel sets and no user can.
pub const HASH_CACHE_DIR: &str = "/var/lib/clusterctl/filehash";

/// The cache entry of a far path: its own name is the sha256 of the path.
fn cache_entry(cache_dir: &str, path: &str) -> String {
    use sha2::{Digest, Sha256};
    format!(
        "{cache_dir}/{}",
        hex::encode(Sha256::digest(path.as_bytes()))
    )
}

/// The far-side identity of a file's content version: size, mtime, ctime (ns) and inode.
const STAT_KEY: &str = "%s.%.9Y.%.9Z.%i";

/// One round trip that reports, for each path, `sha256 mode owner:group` or `-` when missing.
/// The sha256 comes from the hash cache when the file's stat key still matches, else it is
/// computed (and cached).
pub fn stat_script(paths: &[&str], cache_dir: &str) -> String {
    let mut s = String::new();
    for p in paths {
        s.push_str(&format!(
            "f={}; c={}; if [ -f \"$f\" ]; then set -- $(stat -c '{STAT_KEY} %a %U:%G' \"$f\"); \
             if [ -f \"$c\" ] && read -r k h <\"$c\" && [ \"$k\" = \"$1\" ]; then :; \
             else h=$(sha256sum <\"$f\") && h=${{h%% *}} && \
             {{ mkdir -p {cd} && echo \"$1 $h\" >\"$c\"; }} 2>/dev/null; fi; echo \"$h $2 $3\"; else echo -; fi; ",
            quote(p),
            quote(&cache_entry(cache_dir, p)),
            cd = quote(cache_dir),
        ));
    }
    s
}

/// Streams stdin into a temp file beside `dest` — created under umask 077 and only if it does
/// not exist (`set -C`), so a secret is 0600 from its first byte and no one can have planted the
/// name — checks its sha256 and size (`tee | sha256sum`
/// in one pass measured 2x slower: coreutils tee moves 8 KiB at a time), sets mode (and owner),
/// renames it over `dest` and records its hash in the cache; the temp file is removed on any
/// failure. Exit 3: hash mismatch.
pub fn upload_script(
    dest: &str,
    sha256: &str,
    size: u64,
    mode: u32,
    owner: Option<&str>,
    cache_dir: &str,
) -> String {
    let d = quote(dest);
    let chown = match owner {
        Some(o) => format!("chown {} \"$t\" && ", quote(o)),
        None => String::new(),
    };
    format!(
        "set -e; d={d}; dir=$(dirname \"$d\"); mkdir -p \"$dir\"; t=\"$dir/.clusterctl-upload.$$.$(basename \"$d\")\"; \
         trap 'rm -f \"$t\"' EXIT; rm -f \"$t\"; umask 077; set -C; cat >\"$t\"; set +C; h=$(sha256sum \"$t\"); h=${{h%% *}}; n=$(stat -c %s \"$t\"); \
         if [ \"$h\" != {sha256} ] || [ \"$n\" != {size} ]; then \
         echo \"sha256 mismatch on the far side: got $h ($n bytes written), want {sha256} ({size} bytes)\" >&2; exit 3; fi; \
         {chown}chmod {mode:o} \"$t\" && mv -f \"$t\" \"$d\"; trap - EXIT; \
         {{ mkdir -p {cd} && echo \"$(stat -c '{STAT_KEY}' \"$d\") $h\" >{c}; }} 2>/dev/null || true",
        cd = quote(cache_dir),
        c = quote(&cache_entry(cache_dir, dest)),
    )
}

/// Sets mode and owner of an existing file whose content is already right.
pub fn fix_attrs_script(dest: &str, mode: u32, owner: Option<&str>) -> String {
    let mut s = format!("chmod {mode:o} {}", quote(dest));
    if let Some(o) = owner {
        s = format!("chown {} {} && {s}", quote(o), quote(dest));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sh(script: &str) -> std::process::Output {
        Command::new("sh").arg("-c").arg(script).output().unwrap()
    }

    #[test]
    fn quoting_round_trips_through_a_real_shell() {
        for s in [
            "plain",
            "with space",
            "it's",
            "$HOME `x` \"q\"",
            "a\nb",
            "",
            "*",
            "--x;rm",
        ] {
            let out = sh(&format!("printf %s {}", quote(s)));
            assert_eq!(String::from_utf8_lossy(&out.stdout), s, "quoting {s:?}");
        }
        assert_eq!(quote("/etc/x.conf"), "/etc/x.conf");
    }

    /// Every shell metacharacter, alone and mixed: a built command hands each value to the
    /// program as exactly one argument, through a real shell and through a shell-word parser.
    #[test]
    fn a_built_command_never_leaves_a_metacharacter_unquoted() {
        let nasty: Vec<String> = ";&|$`<>()\\\"' \t\n*?[]{}~#!%="
            .chars()
            .map(|c| format!("a{c}b"))
            .chain(
                [
                    "$(touch /tmp/x)",
                    "`id`",
                    "x; rm -rf /",
                    "a'b\"c",
                    "-n",
                    "",
                    "../../etc",
                    "${IFS}",
                ]
                .map(String::from),
            )
            .collect();
        for v in &nasty {
            let c = Cmd::new("printf").arg("%s|").arg(v).arg(v);
            let line = c.to_string();
            let words = shlex::split(&line).unwrap_or_else(|| panic!("unparsable: {line}"));
            assert_eq!(words, ["printf", "%s|", v, v], "{line}");
            let out = sh(&line);
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("{v}|{v}|"),
                "{line}"
            );
        }
        // Raw fragments are source text only, and stay as written.
        let c = systemctl(&["is-active"], ["etcd", "a b"]).raw("2>/dev/null");
        assert_eq!(c.to_string(), "systemctl is-active etcd 'a b' 2>/dev/null");
        assert_eq!(c.negated(), "! systemctl is-active etcd 'a b' 2>/dev/null");
    }

    #[test]
    fn sudo_wrapping() {
        assert_eq!(as_root("true", "root"), "true");
        assert_eq!(
            as_root("a && b > /x", "deploy"),
            "sudo -n -- sh -c 'a && b > /x'"
        );
        assert!(sudo_wants_password("sudo: a password is required\n"));
        assert!(!sudo_wants_password("ls: cannot access"));
    }

    #[test]
    fn stat_and_upload_scripts_work_in_a_local_shell() {
        use sha2::{Digest, Sha256};
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("sub dir/it's.txt");
        let dest_s = dest.to_str().unwrap();
        let data = b"hello\n";
        let sha = hex::encode(Sha256::digest(data));

        let cache_dir = dir.path().join("cache");
        let cache = cache_dir.to_str().unwrap();
        let out = sh(&stat_script(&[dest_s], cache));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "-\n");

        let mut child = Command::new("sh")
            .arg("-c")
            .arg(upload_script(
                dest_s,
                &sha,
                data.len() as u64,
                0o640,
                None,
                cache,
            ))
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(data).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        let out =
            String::from_utf8(sh(&stat_script(&[dest_s, "/nonexistent"], cache)).stdout).unwrap();
        let mut lines = out.lines();
        let first: Vec<&str> = lines.next().unwrap().split(' ').collect();
        assert_eq!(first[0], sha);
        assert_eq!(first[1], "640");
        assert_eq!(lines.next(), Some("-"));

        // A wrong hash leaves the old file and no temp file behind.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(upload_script(
                dest_s,
                &sha,
                data.len() as u64,
                0o644,
                None,
                cache,
            ))
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"other").unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert!(String::from_utf8_lossy(&out.stderr).contains("sha256 mismatch"));
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert_eq!(
            std::fs::read_dir(dest.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn an_upload_is_0600_from_its_first_byte() {
        use sha2::{Digest, Sha256};
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("admin.conf");
        let data = b"secret\n";
        let sha = hex::encode(Sha256::digest(data));
        // The host's default umask (022) would make the temp file world-readable.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask 022; {}",
                upload_script(
                    dest.to_str().unwrap(),
                    &sha,
                    data.len() as u64,
                    0o600,
                    None,
                    dir.path().join("cache").to_str().unwrap(),
                )
            ))
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&data[..3]).unwrap();
        stdin.flush().unwrap();
        // While the first bytes are in the temp file, it is already 0600.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let tmp = loop {
            let found = std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .find(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(".clusterctl-upload.")
                });
            if let Some(e) = found
                && std::fs::metadata(e.path()).is_ok_and(|m| m.len() > 0)
            {
                break e.path();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no temp file appeared"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let mode = std::fs::metadata(&tmp).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "temp file {} is {mode:o}", tmp.display());
        stdin.write_all(&data[3..]).unwrap();
        drop(stdin);
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read(&dest).unwrap(), data);
    }
}
