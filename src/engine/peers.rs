//! Peer copy (`spec.ssh.peerCopy`): a bundle item goes from the operator to a few hosts only,
//! the seeds; every other host that needs it fetches it from a seed over the hosts' own
//! network. On a real site the operator's uplink (a jump host, often 100 Mbit/s) is what
//! limits a large `init`; the hosts' network is not.
//!
//! - A seed gets the item from the operator as usual, then serves it: a small perl server
//!   (perl-base is on every Debian/Ubuntu host; no other program needed) started as a
//!   transient systemd unit on the seed's own address, which answers a request naming an
//!   item's sha256 with the item's bytes — only for the items the operator listed there.
//! - A fetching host pipes those bytes into the same upload script the operator's copies go
//!   through: written beside the destination, its sha256 and size checked against the
//!   manifest's, renamed into place. A seed (or anyone on the network) cannot make a host
//!   install other bytes; a fetch that fails for any reason falls back to the operator.
//! - Nothing listens after the phase: the runner stops every server when a phase ends, and
//!   each server's unit stops itself after [`SERVE_MAX`] should this process die first.
//!
//! Only IPv4 host addresses take part (the perl core's socket class); the others get their
//! copies from the operator.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;

use crate::ssh::shell::{HASH_CACHE_DIR, Script, Shell};

/// The transient unit a seed serves items with.
pub const UNIT: &str = "clusterctl-peer-copy.service";
/// The list of `sha256 path` a seed serves (in /run: gone at reboot).
const LIST: &str = "/run/clusterctl/peer-copy.list";
/// Longest a server may run if no one stops it (a killed run): a phase's copies take far less.
const SERVE_MAX: &str = "15min";
/// Items smaller than this come from the operator: a seed round trip costs more.
pub const MIN_SIZE: u64 = 1 << 20;

/// Who gives a host an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// The operator: this host becomes one of the item's seeds.
    Seed,
    /// A seed that has it: (its name, its address).
    Fetch(String, IpAddr),
    /// Every seed slot is taken and none is ready yet.
    Wait,
}

#[derive(Default)]
struct Item {
    /// Hosts getting the item from the operator now.
    seeding: usize,
    /// Seeds serving it.
    ready: Vec<(String, IpAddr)>,
    /// Round robin over `ready`.
    next: usize,
}

/// Which host gets which item from whom, during one phase.
pub struct Peers {
    pub seeds: usize,
    pub port: u16,
    items: Mutex<BTreeMap<String, Item>>,
    /// Woken when an item gets a seed or loses one.
    pub changed: tokio::sync::Notify,
    /// Hosts whose server runs.
    pub serving: tokio::sync::Mutex<BTreeSet<String>>,
}

impl Peers {
    pub fn new(seeds: usize, port: u16) -> Peers {
        Peers {
            seeds,
            port,
            items: Mutex::new(BTreeMap::new()),
            changed: tokio::sync::Notify::new(),
            serving: tokio::sync::Mutex::new(BTreeSet::new()),
        }
    }

    /// Who gives `sha256` to the next host that needs it. `Seed` reserves a seed slot: the
    /// caller reports [`Peers::seeded`] or [`Peers::seed_failed`].
    pub fn turn(&self, sha256: &str) -> Turn {
        let mut items = self.items.lock().unwrap();
        let it = items.entry(sha256.to_string()).or_default();
        if !it.ready.is_empty() {
            let (name, addr) = it.ready[it.next % it.ready.len()].clone();
            it.next += 1;
            Turn::Fetch(name, addr)
        } else if it.seeding < self.seeds.max(1) {
            it.seeding += 1;
            Turn::Seed
        } else {
            Turn::Wait
        }
    }

    pub fn seeded(&self, sha256: &str, host: &str, addr: IpAddr) {
        let mut items = self.items.lock().unwrap();
        let it = items.entry(sha256.to_string()).or_default();
        it.seeding = it.seeding.saturating_sub(1);
        it.ready.push((host.to_string(), addr));
        drop(items);
        self.changed.notify_waiters();
    }

    pub fn seed_failed(&self, sha256: &str) {
        let mut items = self.items.lock().unwrap();
        if let Some(it) = items.get_mut(sha256) {
            it.seeding = it.seeding.saturating_sub(1);
        }
        drop(items);
        self.changed.notify_waiters();
    }

    /// A phase ended and its servers stopped: the next phase seeds anew.
    pub fn forget(&self) {
        self.items.lock().unwrap().clear();
    }
}

/// The seed's server: one process per connection; it answers a line naming a listed sha256
/// with that file's bytes, anything else with nothing.
const SERVER: &str = r#"use strict; use IO::Socket::INET;
$SIG{CHLD} = "IGNORE";
my ($addr, $port, $list) = @ARGV;
my $l = IO::Socket::INET->new(LocalAddr => $addr, LocalPort => $port, Listen => 128, ReuseAddr => 1) or die "listen on $addr:$port: $!\n";
while (1) {
  my $c = $l->accept or next;
  my $pid = fork;
  if (defined $pid && $pid == 0) {
    close $l; alarm 600; binmode $c;
    my $want = <$c>; $want = "" unless defined $want; chomp $want;
    my $path;
    if (open my $f, "<", $list) { while (<$f>) { chomp; my ($s, $p) = split / /, $_, 2; $path = $p if $s eq $want && $want ne "" } }
    if (defined $path && open my $in, "<:raw", $path) {
      my $buf;
      while (my $n = sysread $in, $buf, 1 << 20) { my $o = 0; while ($o < $n) { my $w = syswrite $c, $buf, $n - $o, $o; exit 1 unless defined $w; $o += $w } }
    }
    exit 0;
  }
  close $c;
}"#;

/// Starts (again) the server on a seed at `addr:port` with an empty list, and waits until it
/// accepts connections. A server a killed run left is stopped first.
pub fn start_server(addr: IpAddr, port: u16) -> Shell {
    const START: &str = r#"u=$1 list=$2 max=$3 addr=$4 port=$5 server=$6
systemctl stop "$u" 2>/dev/null; systemctl reset-failed "$u" 2>/dev/null
mkdir -p "$(dirname "$list")" && : >"$list" && chmod 600 "$list"
systemd-run --quiet --unit="$u" --property=RuntimeMaxSec="$max" --property=Type=simple perl -e "$server" "$addr" "$port" "$list" || exit 1
i=0; while [ $i -lt 50 ]; do
  if timeout 1 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$addr" "$port" 2>/dev/null; then exit 0; fi
  i=$((i + 1)); sleep 0.1
done
echo "the peer-copy server on $addr:$port did not start: $(systemctl status "$u" 2>&1 | tail -n 5)" >&2
systemctl stop "$u" 2>/dev/null; systemctl reset-failed "$u" 2>/dev/null; exit 1"#;
    Script::new(START)
        .arg(UNIT)
        .arg(LIST)
        .arg(SERVE_MAX)
        .arg(addr)
        .arg(port)
        .arg(SERVER)
        .into()
}

/// Adds an item the seed now has at `path` to what its server gives.
pub fn serve(sha256: &str, path: &str) -> Shell {
    Script::new(r#"printf '%s %s\n' "$1" "$2" >>"$3""#)
        .arg(sha256)
        .arg(path)
        .arg(LIST)
        .into()
}

/// Stops a seed's server and removes its list (also when neither is there).
pub fn stop_server() -> Shell {
    Script::new(
        r#"systemctl stop "$1" 2>/dev/null; systemctl reset-failed "$1" 2>/dev/null; rm -f "$2""#,
    )
    .arg(UNIT)
    .arg(LIST)
    .into()
}

/// Fetches the item `sha256` from the seed at `addr:port` into `dest`, through the operator's
/// own upload script: checked against `sha256` and `size` before it replaces `dest`; exit 3
/// when the bytes are not the item (a short stream included).
pub fn fetch(
    addr: IpAddr,
    port: u16,
    dest: &str,
    sha256: &str,
    size: u64,
    mode: u32,
    owner: Option<&str>,
) -> Shell {
    const CLIENT: &str = r#"use strict; use IO::Socket::INET;
my ($addr, $port, $sha) = @ARGV;
my $s = IO::Socket::INET->new(PeerAddr => $addr, PeerPort => $port, Timeout => 10) or die "connect to $addr:$port: $!\n";
binmode $s; binmode STDOUT; $s->autoflush(1); print $s "$sha\n";
my $buf;
while (my $n = sysread $s, $buf, 1 << 20) { my $o = 0; while ($o < $n) { my $w = syswrite STDOUT, $buf, $n - $o, $o; die "write: $!\n" unless defined $w; $o += $w } }"#;
    let client = Script::new(r#"perl -e "$1" "$2" "$3" "$4""#)
        .arg(CLIENT)
        .arg(addr)
        .arg(port)
        .arg(sha256);
    Shell::from(client).pipe(crate::ssh::shell::upload_script(
        dest,
        sha256,
        size,
        mode,
        owner,
        HASH_CACHE_DIR,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_seeds_an_item_a_few_times_and_the_others_fetch_it_round_robin() {
        let p = Peers::new(2, 10200);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(p.turn("s"), Turn::Seed);
        assert_eq!(p.turn("s"), Turn::Seed);
        assert_eq!(p.turn("s"), Turn::Wait, "two seeds under way: wait");
        assert_eq!(p.turn("t"), Turn::Seed, "each item has its own seeds");
        p.seeded("s", "h1", a);
        assert_eq!(p.turn("s"), Turn::Fetch("h1".into(), a));
        p.seed_failed("s");
        p.seeded("s", "h2", b);
        assert_eq!(p.turn("s"), Turn::Fetch("h2".into(), b));
        assert_eq!(p.turn("s"), Turn::Fetch("h1".into(), a));
        p.forget();
        assert_eq!(p.turn("s"), Turn::Seed, "a new phase seeds anew");
    }

    /// The server and the fetch, run here on loopback as on two hosts: the item arrives
    /// checked; an item not listed, or bytes that are not the item, never replace the file.
    #[test]
    fn a_fetch_installs_only_the_listed_item_with_its_hash() {
        let d = tempfile::tempdir().unwrap();
        let item = d.path().join("item");
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&item, &bytes).unwrap();
        let sha = crate::hashing::hash_file(&item).unwrap().0;
        let list = d.path().join("list");
        std::fs::write(&list, format!("{sha} {}\n", item.display())).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        // The server as start_server runs it, without systemd.
        let mut server = std::process::Command::new("perl")
            .arg("-e")
            .arg(SERVER)
            .args(["127.0.0.1", &port.to_string(), list.to_str().unwrap()])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let run = |dest: &std::path::Path, sha: &str| {
            let cmd = fetch(
                "127.0.0.1".parse().unwrap(),
                port,
                dest.to_str().unwrap(),
                sha,
                bytes.len() as u64,
                0o644,
                None,
            );
            let cache = d.path().join("cache");
            let text = cmd
                .as_str()
                .replace(HASH_CACHE_DIR, cache.to_str().unwrap());
            std::process::Command::new("sh")
                .arg("-c")
                .arg(text)
                .output()
                .unwrap()
        };
        let dest = d.path().join("out/kubelet");
        let o = run(&dest, &sha);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(std::fs::read(&dest).unwrap(), bytes);
        // An item the seed does not list: nothing comes, the check fails, nothing replaced.
        let other = "0".repeat(64);
        let dest2 = d.path().join("out/other");
        let o = run(&dest2, &other);
        assert_eq!(
            o.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!dest2.exists());
        server.kill().unwrap();
        server.wait().unwrap();
    }
}
