//! Bridge networks (`kiln network create|ls|rm|inspect`, `kiln run --network NAME|bridge`):
//! records under `networks/<name>/`, their address management (one lease file per address, so
//! an allocation survives restarts and is released by `kiln rm`), and names between the
//! containers of a user-defined network through their `/etc/hosts`. None of this takes the
//! store's lock; `networks/.lock` orders create, rm and a `kiln run` taking an address.

mod attach;
mod commands;
mod subnet;

pub(crate) use attach::{attach, check_possible, unbind, Attached, NETNS_FILE};
pub use subnet::Subnet;

use anyhow::{bail, Context, Result};
use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

const META_FILE: &str = "network.json";
const LEASES_DIR: &str = "leases";
/// Docker's name for the network `kiln run --network bridge` uses.
pub const DEFAULT_NETWORK: &str = "bridge";
/// Where a container's hosts file starts listing the other containers of its network.
const HOSTS_MARKER: &str = "# containers of the kiln network";

/// What `network.json` records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub name: String,
    /// 64 hex digits, as Docker's network ids.
    pub id: String,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    /// The Linux bridge on the host (at most 15 bytes).
    pub bridge: String,
    /// Unix seconds.
    pub created: i64,
}

impl NetworkRecord {
    /// A user-defined network: its containers find each other by name (the default `bridge`
    /// network gives no names, as Docker's does not).
    pub fn user_defined(&self) -> bool {
        self.name != DEFAULT_NETWORK
    }
}

/// What a container's config records about its network: enough for its monitor to plug it in
/// without reading the network again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    pub subnet: Subnet,
}

/// Who holds an address: a lease file's content.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Lease {
    container: String,
    name: String,
}

/// Held while networks are created or removed and while `kiln run` takes an address.
pub struct NetworksLock(#[allow(dead_code)] Flock<std::fs::File>);

fn networks_dir(root: &Path) -> PathBuf {
    root.join("networks")
}

/// Takes `networks/.lock` (waiting for another holder).
pub fn lock(root: &Path) -> Result<NetworksLock> {
    crate::dir_lock::lock(&networks_dir(root)).map(NetworksLock)
}

/// The names `--network` gives a meaning of its own: no network of the store has them.
pub fn predefined(name: &str) -> bool {
    matches!(name, "bridge" | "host" | "none" | "default")
}

fn check_name(name: &str) -> Result<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if !ok {
        bail!("invalid network name `{name}`: use letters, digits and `_.-`, starting with a letter or digit");
    }
    Ok(())
}

/// A network's bridge device: named after its id, not `docker0`-like, so that two stores on
/// one host (tests, rootful and rootless) never share one.
fn bridge_name(id: &str) -> String {
    format!("kbr-{}", &id[..id.len().min(10)])
}

fn random_id() -> String {
    let mut bytes = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    hex::encode(bytes)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn load(dir: &Path) -> Option<NetworkRecord> {
    let text = std::fs::read(dir.join(META_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The host's IPv4 routes (`/proc/net/route`), to keep a default subnet off networks the host
/// already reaches.
fn host_routes() -> Vec<Subnet> {
    std::fs::read_to_string("/proc/net/route")
        .map(|t| subnet::parse_proc_routes(&t))
        .unwrap_or_default()
}

/// Docker's default address pools: 172.17-31.0.0/16, then 192.168.N.0/20.
fn candidate_subnets() -> impl Iterator<Item = Subnet> {
    let b16 = (17u8..=31).map(|b| Subnet::new(Ipv4Addr::new(172, b, 0, 0), 16));
    let b20 = (0u8..16).map(|c| Subnet::new(Ipv4Addr::new(192, 168, c * 16, 0), 20));
    b16.chain(b20).flatten()
}

fn choose_subnet(taken: &[Subnet]) -> Result<Subnet> {
    let routes = host_routes();
    candidate_subnets()
        .find(|s| {
            !taken.iter().any(|t| t.overlaps(s))
                && !routes.iter().any(|r| r.prefix > 0 && r.overlaps(s))
        })
        .context("no free subnet left in Docker's default pools: give one with `--subnet`")
}

fn write_record(dir: &Path, rec: &NetworkRecord) -> Result<()> {
    std::fs::create_dir_all(dir.join(LEASES_DIR))
        .with_context(|| format!("cannot create `{}`", dir.display()))?;
    // Whole or not at all: a reader without the lock never sees half a record.
    let tmp = dir.join(format!(".{META_FILE}.{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(rec)?)
        .with_context(|| format!("cannot write `{}`", tmp.display()))?;
    let dest = dir.join(META_FILE);
    std::fs::rename(&tmp, &dest).with_context(|| format!("cannot write `{}`", dest.display()))
}

/// Every network of the store (the default `bridge` one made on first use), by name.
pub fn list(root: &Path) -> Result<Vec<NetworkRecord>> {
    ensure_default(root)?;
    Ok(list_existing(root))
}

fn list_existing(root: &Path) -> Vec<NetworkRecord> {
    let mut all: Vec<NetworkRecord> = std::fs::read_dir(networks_dir(root))
        .map(|rd| {
            rd.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .filter_map(|e| load(&e.path()))
                .collect()
        })
        .unwrap_or_default();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// The default `bridge` network, made with the first free subnet of Docker's pools.
fn ensure_default(root: &Path) -> Result<NetworkRecord> {
    let dir = networks_dir(root).join(DEFAULT_NETWORK);
    if let Some(rec) = load(&dir) {
        return Ok(rec);
    }
    let lock = lock(root)?;
    make_default(&lock, root)
}

/// The default network, made now if missing (under the lock the caller holds).
fn make_default(_lock: &NetworksLock, root: &Path) -> Result<NetworkRecord> {
    let dir = networks_dir(root).join(DEFAULT_NETWORK);
    if let Some(rec) = load(&dir) {
        return Ok(rec);
    }
    let taken: Vec<Subnet> = list_existing(root).iter().map(|n| n.subnet).collect();
    let subnet = choose_subnet(&taken)?;
    let id = random_id();
    let rec = NetworkRecord {
        name: DEFAULT_NETWORK.into(),
        subnet,
        gateway: subnet
            .host(1)
            .context("the default subnet has no addresses")?,
        bridge: bridge_name(&id),
        id,
        created: now(),
    };
    write_record(&dir, &rec)?;
    Ok(rec)
}

/// The network called `query` (or whose id starts with it).
pub fn find(root: &Path, query: &str) -> Result<NetworkRecord> {
    if query == DEFAULT_NETWORK || query == "default" {
        return ensure_default(root);
    }
    let all = list_existing(root);
    if let Some(n) = all.iter().find(|n| n.name == query || n.id == query) {
        return Ok(n.clone());
    }
    let hex = query.len() >= 3 && query.bytes().all(|b| b.is_ascii_hexdigit());
    let matches: Vec<&NetworkRecord> = all
        .iter()
        .filter(|n| hex && n.id.starts_with(query))
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        _ => bail!("no network `{query}`: `kiln network ls` lists them, `kiln network create {query}` makes one"),
    }
}

/// `kiln network create`: a bridge network with `subnet` (a free one from Docker's pools when
/// not given) and `gateway` (its first address when not given). The bridge itself is made when
/// a container first uses it.
pub fn create(
    lock: &NetworksLock,
    root: &Path,
    name: &str,
    subnet: Option<&str>,
    gateway: Option<&str>,
) -> Result<NetworkRecord> {
    check_name(name)?;
    if predefined(name) {
        bail!("`{name}` is a pre-defined network and cannot be created: choose another name");
    }
    let dir = networks_dir(root).join(name);
    if dir.exists() {
        bail!("network with name `{name}` already exists: remove it first (`kiln network rm {name}`) or choose another name");
    }
    make_default(lock, root)?;
    let others = list_existing(root);
    let subnet = match subnet {
        Some(s) => {
            let s: Subnet = s.parse()?;
            if let Some(o) = others.iter().find(|o| o.subnet.overlaps(&s)) {
                bail!(
                    "subnet `{s}` overlaps `{}` of network `{}`: choose another `--subnet`",
                    o.subnet,
                    o.name
                );
            }
            s
        }
        None => {
            if gateway.is_some() {
                bail!("`--gateway` needs `--subnet`: say which subnet it belongs to");
            }
            choose_subnet(&others.iter().map(|o| o.subnet).collect::<Vec<_>>())?
        }
    };
    let gateway = match gateway {
        Some(g) => {
            let g: Ipv4Addr = g
                .parse()
                .map_err(|_| anyhow::anyhow!("invalid `--gateway {g}`: give an IPv4 address"))?;
            if !subnet.usable(g) {
                bail!("gateway `{g}` is not a host address of subnet `{subnet}`");
            }
            g
        }
        None => subnet
            .host(1)
            .with_context(|| format!("subnet `{subnet}` has no host addresses"))?,
    };
    let id = random_id();
    let rec = NetworkRecord {
        name: name.to_string(),
        bridge: bridge_name(&id),
        id,
        subnet,
        gateway,
        created: now(),
    };
    write_record(&dir, &rec)?;
    Ok(rec)
}

/// The addresses taken on `net` (address, container id, container name), stale ones (whose
/// container is gone without `kiln rm`) left out.
fn leases(root: &Path, net: &NetworkRecord) -> Vec<(Ipv4Addr, String, String)> {
    let dir = networks_dir(root).join(&net.name).join(LEASES_DIR);
    let containers = root.join("containers");
    let mut out: Vec<(Ipv4Addr, String, String)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let ip: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
                    let lease: Lease =
                        serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                    containers.join(&lease.container).is_dir().then_some((
                        ip,
                        lease.container,
                        lease.name,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// `kiln network rm`: refuses a pre-defined network and one any container (running or not)
/// is attached to; takes the bridge and its NAT rules down.
pub fn remove(_lock: &NetworksLock, root: &Path, query: &str) -> Result<String> {
    if predefined(query) {
        bail!("`{query}` is a pre-defined network and cannot be removed");
    }
    let net = find(root, query)?;
    let users: Vec<String> = leases(root, &net).into_iter().map(|l| l.2).collect();
    if let Some(first) = users.first() {
        let many = users.len() > 1;
        bail!(
            "network `{}` is in use by container{} `{}`: remove {} first (`kiln rm -f {first}`)",
            net.name,
            if many { "s" } else { "" },
            users.join("`, `"),
            if many { "them" } else { "it" },
        );
    }
    let dir = networks_dir(root).join(&net.name);
    // Rootless, the bridge and its rules live in the network's keeper and go with it.
    attach::stop_keeper(&dir);
    commands::remove_bridge(&mut commands::Host, &net.bridge, net.subnet)?;
    std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove `{}`", dir.display()))?;
    Ok(net.name)
}

/// `kiln network prune`: removes every user network no container (running or not) is attached
/// to, as `kiln network rm` would; returns their names. The pre-defined ones stay.
pub fn prune(lock: &NetworksLock, root: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for net in list_existing(root) {
        if predefined(&net.name) || !leases(root, &net).is_empty() {
            continue;
        }
        removed.push(remove(lock, root, &net.name)?);
    }
    Ok(removed)
}

/// `kiln network inspect`: the network as `docker network inspect` shows one.
pub fn inspect(root: &Path, net: &NetworkRecord) -> serde_json::Value {
    let containers: serde_json::Map<String, serde_json::Value> = leases(root, net)
        .into_iter()
        .map(|(ip, id, name)| {
            (
                id,
                serde_json::json!({
                    "Name": name,
                    "IPv4Address": format!("{ip}/{}", net.subnet.prefix),
                }),
            )
        })
        .collect();
    serde_json::json!({
        "Name": net.name,
        "Id": net.id,
        "Created": crate::export::rfc3339(net.created),
        "Scope": "local",
        "Driver": "bridge",
        "EnableIPv6": false,
        "IPAM": {
            "Driver": "default",
            "Config": [{"Subnet": net.subnet.to_string(), "Gateway": net.gateway.to_string()}],
        },
        "Internal": false,
        "Containers": containers,
        "Options": {"com.docker.network.bridge.name": net.bridge},
    })
}

/// Takes the lowest free address of `net` for a container (a lease file made exclusively, so
/// two `kiln run`s never share one).
pub(crate) fn allocate(
    _lock: &NetworksLock,
    root: &Path,
    net: &NetworkRecord,
    container: &str,
    name: &str,
) -> Result<Attachment> {
    let dir = networks_dir(root).join(&net.name).join(LEASES_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let live: Vec<Ipv4Addr> = leases(root, net).into_iter().map(|l| l.0).collect();
    let lease = serde_json::to_vec(&Lease {
        container: container.into(),
        name: name.into(),
    })?;
    for ip in net.subnet.hosts() {
        if ip == net.gateway || live.contains(&ip) {
            continue;
        }
        let path = dir.join(ip.to_string());
        // A lease file whose container is gone is stale: taken over.
        let _ = std::fs::remove_file(&path);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path);
        match file {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(&lease)
                    .with_context(|| format!("cannot write `{}`", path.display()))?;
                return Ok(Attachment {
                    network: net.name.clone(),
                    ip,
                    prefix: net.subnet.prefix,
                    gateway: net.gateway,
                    bridge: net.bridge.clone(),
                    subnet: net.subnet,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot write `{}`", path.display())),
        }
    }
    bail!(
        "network `{}` has no free address left in `{}`: remove a container from it or make a network with a larger `--subnet`",
        net.name,
        net.subnet
    )
}

/// Gives a removed container's address back, and takes its name out of the other containers'
/// hosts files.
pub(crate) fn release(root: &Path, a: &Attachment, container: &str) {
    let path = networks_dir(root)
        .join(&a.network)
        .join(LEASES_DIR)
        .join(a.ip.to_string());
    let ours = std::fs::read(&path)
        .ok()
        .and_then(|t| serde_json::from_slice::<Lease>(&t).ok())
        .is_some_and(|l| l.container == container);
    if ours {
        let _ = std::fs::remove_file(&path);
    }
    refresh_hosts(root, &a.network);
}

/// The lines the containers of a user-defined network add to each one's `/etc/hosts`.
fn peers_block(root: &Path, net: &NetworkRecord) -> String {
    let mut s = format!("{HOSTS_MARKER} `{}`\n", net.name);
    for (ip, _, name) in leases(root, net) {
        s.push_str(&format!("{ip}\t{name}\n"));
    }
    s
}

/// `text` (a hosts file) with its list of the network's containers replaced by `block`.
fn with_peers(text: &str, block: &str) -> String {
    let base = match text.find(HOSTS_MARKER) {
        Some(at) => &text[..at],
        None => text,
    };
    format!("{base}{block}")
}

/// The state file bound over a container's `/etc/hosts`.
pub(crate) fn hosts_file(container_dir: &Path) -> PathBuf {
    container_dir.join("state").join("hosts.extra")
}

/// Rewrites the hosts file of every container of a user-defined network with the network's
/// current containers. In place: the file is bind-mounted, so a new inode would not be seen.
pub(crate) fn refresh_hosts(root: &Path, network: &str) {
    let Some(net) = load(&networks_dir(root).join(network)) else {
        return;
    };
    if !net.user_defined() {
        return;
    }
    let block = peers_block(root, &net);
    for (_, id, _) in leases(root, &net) {
        let path = hosts_file(&root.join("containers").join(id));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let new = with_peers(&text, &block);
        if new == text {
            continue;
        }
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
        {
            use std::io::Write;
            let _ = f.write_all(new.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn container(root: &Path, id: &str) {
        std::fs::create_dir_all(root.join("containers").join(id).join("state")).unwrap();
    }

    #[test]
    fn addresses_are_the_lowest_free_and_survive_a_reload_and_come_back_on_release() {
        let s = store();
        let root = s.path();
        let l = lock(root).unwrap();
        let net = create(&l, root, "t1", Some("10.231.0.0/29"), None).unwrap();
        assert_eq!(net.gateway, Ipv4Addr::new(10, 231, 0, 1));
        let mut got = Vec::new();
        for i in 0..5 {
            let id = format!("c{i}");
            container(root, &id);
            got.push(allocate(&l, root, &net, &id, &id).unwrap().ip);
        }
        let want: Vec<Ipv4Addr> = (2..=6).map(|d| Ipv4Addr::new(10, 231, 0, d)).collect();
        assert_eq!(got, want);
        container(root, "c5");
        let full = allocate(&l, root, &net, "c5", "c5").unwrap_err();
        assert!(format!("{full:#}").contains("no free address"), "{full:#}");
        // Read back from disk, as after a restart: the same leases are held.
        let again = find(root, "t1").unwrap();
        assert_eq!(leases(root, &again).len(), 5);
        let a = Attachment {
            network: "t1".into(),
            ip: Ipv4Addr::new(10, 231, 0, 3),
            prefix: 29,
            gateway: net.gateway,
            bridge: net.bridge.clone(),
            subnet: net.subnet,
        };
        release(root, &a, "c1");
        assert_eq!(allocate(&l, root, &net, "c5", "c5").unwrap().ip, a.ip);
    }

    #[test]
    fn a_lease_whose_container_is_gone_is_taken_over() {
        let s = store();
        let root = s.path();
        let l = lock(root).unwrap();
        let net = create(&l, root, "t2", Some("10.232.0.0/24"), None).unwrap();
        container(root, "a");
        let first = allocate(&l, root, &net, "a", "a").unwrap().ip;
        std::fs::remove_dir_all(root.join("containers").join("a")).unwrap();
        container(root, "b");
        assert_eq!(allocate(&l, root, &net, "b", "b").unwrap().ip, first);
    }

    #[test]
    fn create_refuses_bad_names_overlaps_and_a_gateway_outside() {
        let s = store();
        let root = s.path();
        let l = lock(root).unwrap();
        create(&l, root, "n1", Some("10.240.0.0/16"), None).unwrap();
        let e = |r: Result<NetworkRecord>| format!("{:#}", r.unwrap_err());
        assert!(e(create(&l, root, "n1", None, None)).contains("already exists"));
        assert!(e(create(&l, root, "bridge", None, None)).contains("pre-defined"));
        assert!(e(create(&l, root, "-x", None, None)).contains("invalid network name"));
        assert!(e(create(&l, root, "n2", Some("10.240.3.0/24"), None)).contains("overlaps"));
        assert!(e(create(
            &l,
            root,
            "n3",
            Some("10.9.0.0/24"),
            Some("10.8.0.1")
        ))
        .contains("not a host address"));
        let n4 = create(&l, root, "n4", Some("10.9.0.0/24"), Some("10.9.0.254")).unwrap();
        assert_eq!(n4.gateway, Ipv4Addr::new(10, 9, 0, 254));
        assert!(n4.bridge.len() <= 15);
        // A default subnet stays off the others (and the default network's).
        let n5 = create(&l, root, "n5", None, None).unwrap();
        let all = list(root).unwrap();
        for o in all.iter().filter(|o| o.name != "n5") {
            assert!(!o.subnet.overlaps(&n5.subnet), "{o:?} {n5:?}");
        }
        assert!(all.iter().any(|n| n.name == DEFAULT_NETWORK));
    }

    #[test]
    fn hosts_files_list_the_networks_containers_after_the_base_lines() {
        let base = "127.0.0.1\tlocalhost\n10.0.0.2\tabc\n";
        let once = with_peers(
            base,
            "# containers of the kiln network `n`\n10.0.0.3\tweb\n",
        );
        assert_eq!(
            once,
            "127.0.0.1\tlocalhost\n10.0.0.2\tabc\n# containers of the kiln network `n`\n10.0.0.3\tweb\n"
        );
        let twice = with_peers(&once, "# containers of the kiln network `n`\n");
        assert_eq!(
            twice,
            "127.0.0.1\tlocalhost\n10.0.0.2\tabc\n# containers of the kiln network `n`\n"
        );
    }
}
