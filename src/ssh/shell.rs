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
    pub fn and(self, next: impl Into<Shell>) -> Shell {
        Shell::from(self).and(next)
    }
    /// `! self`: succeeds when the command fails.
    pub fn negated(&self) -> Shell {
        Shell(format!("! {self}"))
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

/// A command line for a remote shell, made only of clusterctl's own text and quoted values: the
/// one type the executor, the SSH pool and the plan's actions run. There is no `From<String>`:
/// a runtime value reaches a shell only as an argument of a [`Cmd`] or a [`Script`], which quote
/// it, so the compiler finds any `format!` into a shell string.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Shell(String);

impl Shell {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The command running this on the local machine with `sh -c`: unit tests run the
    /// project's host scripts for real against temporary files.
    #[cfg(test)]
    pub fn local(&self) -> std::process::Command {
        let mut c = std::process::Command::new("sh");
        c.args(["-c", &self.0]);
        c
    }
    /// `self && next`
    pub fn and(self, next: impl Into<Shell>) -> Shell {
        Shell(format!("{} && {}", self.0, next.into().0))
    }
    /// `self; next` (next runs whatever self's exit).
    pub fn then(self, next: impl Into<Shell>) -> Shell {
        Shell(format!("{}; {}", self.0, next.into().0))
    }
    /// `self | next`: next reads what self writes (the pipeline's status is next's).
    pub fn pipe(self, next: impl Into<Shell>) -> Shell {
        Shell(format!("{} | {}", self.0, next.into().0))
    }
    /// `! { self; }`: succeeds when the command fails.
    pub fn negated(self) -> Shell {
        Shell(format!("! {{ {}; }}", self.0))
    }
    /// The commands joined with `&&` (`true` when there are none).
    pub fn all(cmds: impl IntoIterator<Item = Shell>) -> Shell {
        cmds.into_iter()
            .reduce(Shell::and)
            .unwrap_or_else(|| Shell::from("true"))
    }
}

impl From<&'static str> for Shell {
    fn from(s: &'static str) -> Shell {
        Shell(s.to_string())
    }
}

impl From<Cmd> for Shell {
    fn from(c: Cmd) -> Shell {
        Shell(c.to_string())
    }
}

impl From<&Cmd> for Shell {
    fn from(c: &Cmd) -> Shell {
        Shell(c.to_string())
    }
}

impl From<Script> for Shell {
    fn from(s: Script) -> Shell {
        Shell::from(
            Cmd::new(s.interpreter)
                .arg("-c")
                .arg(s.text)
                .arg(s.interpreter)
                .args(s.args),
        )
    }
}

impl From<&Shell> for Shell {
    fn from(s: &Shell) -> Shell {
        s.clone()
    }
}

impl AsRef<str> for Shell {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A shell script written in clusterctl's source whose values arrive as positional parameters
/// (`"$1"`, `shift`, `"$@"`): run as `sh -c 'TEXT' sh 'v1' 'v2' …`. The text is fixed at
/// compile time, so a value can change what the script works on, never what it does — the
/// form for anything a [`Cmd`] cannot say (loops, pipes, tests on several values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    interpreter: &'static str,
    text: &'static str,
    args: Vec<String>,
}

impl Script {
    /// A POSIX `sh` script.
    pub fn new(text: &'static str) -> Script {
        Script {
            interpreter: "sh",
            text,
            args: Vec::new(),
        }
    }
    /// A script that needs bash (`/dev/tcp`, `pipefail`, arrays): run by `bash -c` whatever
    /// the login shell or sudo's `sh -c` is.
    pub fn bash(text: &'static str) -> Script {
        Script {
            interpreter: "bash",
            ..Script::new(text)
        }
    }
    /// The next positional parameter.
    pub fn arg(mut self, a: impl ToString) -> Script {
        self.args.push(a.to_string());
        self
    }
    /// Each item the next positional parameter.
    pub fn args<I, S>(mut self, items: I) -> Script
    where
        I: IntoIterator<Item = S>,
        S: ToString,
    {
        self.args.extend(items.into_iter().map(|a| a.to_string()));
        self
    }
}

/// `systemctl VERB UNIT…`, each unit quoted.
pub fn systemctl<S: AsRef<str>>(verb: &[&str], units: impl IntoIterator<Item = S>) -> Cmd {
    Cmd::new("systemctl").args(verb).args(units)
}

/// Runs `cmd` as root: unchanged for root, else through `sudo -n` (never prompts) and `sh -c`
/// so pipes, redirections and `&&` all run privileged.
pub fn as_root(cmd: &Shell, user: &str) -> Shell {
    if user == "root" {
        cmd.clone()
    } else {
        Shell::from(
            Cmd::new("sudo")
                .args(["-n", "--", "sh", "-c"])
                .arg(cmd.as_str()),
        )
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
pub fn cache_entry(cache_dir: &str, path: &str) -> String {
    use sha2::{Digest, Sha256};
    format!(
        "{cache_dir}/{}",
        hex::encode(Sha256::digest(path.as_bytes()))
    )
}

/// `cache_hit KEY ENTRY`: true, with the cached sha256 in `$h`, when the hash-cache entry
/// ENTRY holds KEY (the file's [`STAT_KEY`] now). The one reader of the cache's format, for
/// [`stat_script`] and the engine's state query.
#[macro_export]
macro_rules! hash_cache_hit {
    () => {
        "cache_hit() { [ -f \"$2\" ] && read -r ck h <\"$2\" && [ \"$ck\" = \"$1\" ]; }\n"
    };
}

/// `sha256 FILE`: prints FILE's sha256 as the first word of its line. With `openssl` (on most
/// hosts: Debian's ca-certificates depends on it), else coreutils' `sha256sum`: OpenSSL uses
/// the CPU's SHA extensions, coreutils 9.1 does not (110 MB of kube-apiserver: 0.10 s against
/// 0.40 s here), and every byte a host receives is hashed once. Reads stdin, so no file name
/// can change the output's format.
#[macro_export]
macro_rules! sha256_fn {
    () => {
        "sha256() { openssl dgst -sha256 -r <\"$1\" 2>/dev/null || sha256sum <\"$1\"; }\n"
    };
}

/// The far-side identity of a file's content version: size, mtime, ctime (ns) and inode.
pub const STAT_KEY: &str = "%s.%.9Y.%.9Z.%i";

/// One round trip that reports, for each path, `sha256 mode owner:group` or `-` when missing.
/// The sha256 comes from the hash cache when the file's stat key still matches, else it is
/// computed (and cached).
pub fn stat_script(paths: &[&str], cache_dir: &str) -> Shell {
    const STAT: &str = concat!(
        crate::hash_cache_hit!(),
        crate::sha256_fn!(),
        r#"k=$1 cd=$2; shift 2
while [ $# -gt 0 ]; do
  f=$1 c=$2 h=; shift 2
  if [ -f "$f" ]; then
    s=$(stat -c "$k %a %U:%G" "$f"); key=${s%% *}; r=${s#* }; m=${r%% *}; o=${r#* }
    if cache_hit "$key" "$c"; then :
    else h=$(sha256 "$f") && h=${h%% *} && { mkdir -p "$cd" && echo "$key $h" >"$c"; } 2>/dev/null; fi
    echo "$h $m $o"
  else echo -; fi
done"#
    );
    let mut script = Script::new(STAT).arg(STAT_KEY).arg(cache_dir);
    for p in paths {
        script = script.arg(p).arg(cache_entry(cache_dir, p));
    }
    script.into()
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
) -> Shell {
    upload_script_as(dest, sha256, size, mode, owner, cache_dir, None)
}

/// How a compressed stream was packed: what the host expands it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// `gzip -dc`: on every Linux host.
    Gzip,
    /// `zstd -dc`: ~7x faster to expand than gzip, and smaller; on hosts that have it (a
    /// Debian 12 or Ubuntu machine with a kernel: initramfs-tools wants it), not on a minbase.
    Zstd,
}

impl Packing {
    /// The program the host expands the stream with (also the upload script's argument).
    pub fn program(self) -> &'static str {
        match self {
            Packing::Gzip => "gzip",
            Packing::Zstd => "zstd",
        }
    }
}

/// [`upload_script`] for a compressed stream: stdin is expanded with `packing`'s program and
/// the expanded bytes are checked against `sha256` and `size`. Exit 3 also when the stream
/// does not expand.
pub fn upload_packed_script(
    dest: &str,
    sha256: &str,
    size: u64,
    mode: u32,
    owner: Option<&str>,
    cache_dir: &str,
    packing: Packing,
) -> Shell {
    upload_script_as(dest, sha256, size, mode, owner, cache_dir, Some(packing))
}

fn upload_script_as(
    dest: &str,
    sha256: &str,
    size: u64,
    mode: u32,
    owner: Option<&str>,
    cache_dir: &str,
    packing: Option<Packing>,
) -> Shell {
    const UPLOAD: &str = concat!(
        crate::sha256_fn!(),
        r#"set -e; d=$1 want=$2 size=$3 mode=$4 owner=$5 k=$6 cd=$7 c=$8 z=$9
dir=$(dirname "$d"); mkdir -p "$dir"; t="$dir/.clusterctl-upload.$$.$(basename "$d")"
trap 'rm -f "$t"' EXIT; rm -f "$t"; umask 077; set -C
case $z in gzip|zstd) "$z" -dcq >"$t" || { echo "the $z stream did not expand" >&2; exit 3; } ;; *) cat >"$t" ;; esac; set +C
h=$(sha256 "$t"); h=${h%% *}; n=$(stat -c %s "$t")
if [ "$h" != "$want" ] || [ "$n" != "$size" ]; then
  echo "sha256 mismatch on the far side: got $h ($n bytes written), want $want ($size bytes)" >&2; exit 3
fi
if [ -n "$owner" ]; then chown "$owner" "$t"; fi
chmod "$mode" "$t" && mv -f "$t" "$d"; trap - EXIT
{ mkdir -p "$cd" && echo "$(stat -c "$k" "$d") $h" >"$c"; } 2>/dev/null || true"#
    );
    Script::new(UPLOAD)
        .arg(dest)
        .arg(sha256)
        .arg(size)
        .arg(format!("{mode:o}"))
        .arg(owner.unwrap_or(""))
        .arg(STAT_KEY)
        .arg(cache_dir)
        .arg(cache_entry(cache_dir, dest))
        .arg(packing.map_or("", Packing::program))
        .into()
}

/// Sets mode and owner of an existing file whose content is already right.
pub fn fix_attrs_script(dest: &str, mode: u32, owner: Option<&str>) -> Shell {
    let chmod = Cmd::new("chmod").arg(format!("{mode:o}")).arg(dest);
    match owner {
        Some(o) => Cmd::new("chown").arg(o).arg(dest).and(chmod),
        None => chmod.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    fn sh(script: impl AsRef<str>) -> std::process::Output {
        Command::new("sh")
            .arg("-c")
            .arg(script.as_ref())
            .output()
            .unwrap()
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
            let out = sh(format!("printf %s {}", quote(s)));
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
        // A script's values are its positional parameters, whatever they hold; under sudo's
        // `sh -c` wrapping too.
        for v in &nasty {
            let script: Shell = Script::new(r#"printf '%s|' "$1" "$@""#).args([v, v]).into();
            let out = sh(&script);
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("{v}|{v}|{v}|")
            );
            let wrapped = Shell::from(Cmd::new("sh").arg("-c").arg(script.as_str()));
            let out = sh(&wrapped);
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("{v}|{v}|{v}|")
            );
        }
        // Raw fragments are source text only, and stay as written.
        let c = systemctl(&["is-active"], ["etcd", "a b"]).raw("2>/dev/null");
        assert_eq!(c.to_string(), "systemctl is-active etcd 'a b' 2>/dev/null");
        assert_eq!(
            c.negated().as_str(),
            "! systemctl is-active etcd 'a b' 2>/dev/null"
        );
    }

    #[test]
    fn sudo_wrapping() {
        assert_eq!(as_root(&"true".into(), "root").as_str(), "true");
        assert_eq!(
            as_root(&"a && b > /x".into(), "deploy").as_str(),
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
        let out = sh(stat_script(&[dest_s], cache));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "-\n");

        let mut child = Command::new("sh")
            .arg("-c")
            .arg(upload_script(dest_s, &sha, data.len() as u64, 0o640, None, cache).as_str())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(data).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        let out =
            String::from_utf8(sh(stat_script(&[dest_s, "/nonexistent"], cache)).stdout).unwrap();
        let mut lines = out.lines();
        let first: Vec<&str> = lines.next().unwrap().split(' ').collect();
        assert_eq!(first[0], sha);
        assert_eq!(first[1], "640");
        assert_eq!(lines.next(), Some("-"));

        // A wrong hash leaves the old file and no temp file behind.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(upload_script(dest_s, &sha, data.len() as u64, 0o644, None, cache).as_str())
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

    /// `sha256` gives the same word with OpenSSL and, on a host without it, with coreutils;
    /// an unreadable file gives no hash and a failure.
    #[test]
    fn the_far_side_hash_is_the_same_with_or_without_openssl() {
        use sha2::{Digest, Sha256};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a \\ b\nc");
        std::fs::write(&file, b"some bytes").unwrap();
        let want = hex::encode(Sha256::digest(b"some bytes"));
        // A PATH with coreutils' sha256sum and no openssl.
        let bare = dir.path().join("bin");
        std::fs::create_dir(&bare).unwrap();
        let coreutils = which("sha256sum");
        std::os::unix::fs::symlink(&coreutils, bare.join("sha256sum")).unwrap();
        let script = concat!(
            crate::sha256_fn!(),
            r#"h=$(sha256 "$1") && echo "${h%% *}""#
        );
        let run = |path: &str, f: &Path| {
            Command::new("/bin/sh")
                .env("PATH", path)
                .args(["-c", script, "sh"])
                .arg(f)
                .output()
                .unwrap()
        };
        let have_openssl = run(&std::env::var("PATH").unwrap(), &file);
        assert_eq!(String::from_utf8_lossy(&have_openssl.stdout).trim(), want);
        let without = run(bare.to_str().unwrap(), &file);
        assert_eq!(String::from_utf8_lossy(&without.stdout).trim(), want);
        let missing = run(bare.to_str().unwrap(), &dir.path().join("none"));
        assert!(!missing.status.success());
        assert_eq!(String::from_utf8_lossy(&missing.stdout), "");
    }

    fn which(prog: &str) -> std::path::PathBuf {
        std::env::var("PATH")
            .unwrap()
            .split(':')
            .map(|d| Path::new(d).join(prog))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{prog} is not on PATH"))
    }

    /// A gzip or zstd stream lands expanded and hash-checked; a stream that does not expand,
    /// or expands to other bytes, leaves the old file and no temp file (exit 3).
    #[test]
    fn a_packed_upload_lands_expanded_and_checked() {
        for packing in [Packing::Gzip, Packing::Zstd] {
            packed_upload_lands_expanded_and_checked(packing);
        }
    }

    fn packed_upload_lands_expanded_and_checked(packing: Packing) {
        use sha2::{Digest, Sha256};
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("bin/kubelet");
        let dest_s = dest.to_str().unwrap();
        let cache = dir.path().join("cache");
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let sha = hex::encode(Sha256::digest(&data));
        let gz = |d: &[u8]| match packing {
            Packing::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(d).unwrap();
                e.finish().unwrap()
            }
            Packing::Zstd => zstd::encode_all(d, 3).unwrap(),
        };
        let put = |input: &[u8]| {
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(
                    upload_packed_script(
                        dest_s,
                        &sha,
                        data.len() as u64,
                        0o755,
                        None,
                        cache.to_str().unwrap(),
                        packing,
                    )
                    .as_str(),
                )
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(input).unwrap();
            child.wait_with_output().unwrap()
        };
        let packed = gz(&data);
        assert!(packed.len() < data.len() / 4, "{}", packed.len());
        let out = put(&packed);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        for (bad, why) in [
            (gz(b"other bytes"), "sha256 mismatch"),
            (b"not packed at all".to_vec(), "did not expand"),
        ] {
            let out = put(&bad);
            assert_eq!(out.status.code(), Some(3));
            assert!(String::from_utf8_lossy(&out.stderr).contains(why));
            assert_eq!(std::fs::read(&dest).unwrap(), data);
            assert_eq!(
                std::fs::read_dir(dest.parent().unwrap()).unwrap().count(),
                1
            );
        }
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
