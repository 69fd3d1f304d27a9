//! The XDP program that steers every frame of the node's interfaces into calxdp's AF_XDP sockets, loaded
//! with aya and attached through bpf_link, so the kernel detaches it when the process exits, however it
//! exits. The object is assembled from `dataplane/bpf/redirect.s` and committed (no clang needed to build).

use aya::maps::XskMap;
use aya::programs::{Xdp, XdpMode};
use aya::Ebpf;

/// The committed object (see `bpf/redirect.s` for how it is rebuilt).
pub static REDIRECT_OBJECT: &[u8] = include_bytes!("../bpf/redirect.o");

const PROGRAM: &str = "calxdp_redirect";
const MAP: &str = "calxdp_xsks";

/// The program loaded for one interface, attached to it, with that interface's socket map (one map per
/// interface, since the map is indexed by queue).
pub struct Redirect {
    ebpf: Ebpf,
    map: XskMap<aya::maps::MapData>,
    pub interface: String,
    /// "native" or "generic".
    pub mode: &'static str,
}

impl std::fmt::Debug for Redirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirect").field("interface", &self.interface).field("mode", &self.mode).finish()
    }
}

/// Why the XDP program could not be set up on an interface. Each message is what the user sees, causes
/// included.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The committed object does not load, or lacks the program or map calxdp expects.
    #[error("{0}")]
    Object(String),
    /// The kernel refused the program or its attachment; `cause` is the chain of causes, with a hint where
    /// the cause is a lack of privileges.
    #[error("{what}: {cause}")]
    Refused { what: String, cause: String },
    /// Another XDP program holds the interface.
    #[error(
        "the kernel refused to attach XDP to {interface}: {cause} ({interface} is busy: another XDP program, \
         {holder}, is attached to it, by another calxdp or another tool; see `ip -d link show dev {interface}`, \
         and detach it with `ip link set dev {interface} xdp off` if nothing needs it)"
    )]
    Busy { interface: String, holder: String, cause: String },
    /// The socket map refused an AF_XDP socket.
    #[error("registering the AF_XDP socket of {interface} queue {queue}: {cause}")]
    Register { interface: String, queue: u32, cause: String },
}

impl Redirect {
    /// Loads the program and attaches it to `interface` in native (driver) mode, falling back to generic
    /// mode where the driver has no XDP support.
    pub fn attach(interface: &str) -> Result<Redirect, XdpError> {
        let refused = |what: String, e: &dyn std::error::Error| XdpError::Refused { what, cause: causes(e) };
        let mut ebpf = Ebpf::load(REDIRECT_OBJECT).map_err(|e| refused("loading the XDP object".into(), &e))?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| XdpError::Object(format!("the XDP object has no program {PROGRAM}")))?
            .try_into()
            .map_err(|e| XdpError::Object(format!("{PROGRAM} is not an XDP program: {e}")))?;
        prog.load().map_err(|e| refused("the kernel refused the XDP program".into(), &e))?;
        let mode = match prog.attach(interface, XdpMode::Driver) {
            Ok(_) => "native",
            Err(native) => match prog.attach(interface, XdpMode::Skb) {
                Ok(_) => "generic",
                Err(_) => {
                    let what = format!("the kernel refused to attach XDP to {interface}");
                    return Err(match attached_program(interface) {
                        Some(holder) => {
                            XdpError::Busy { interface: interface.to_string(), holder, cause: causes(&native) }
                        }
                        None => refused(what, &native),
                    });
                }
            },
        };
        let map = ebpf.take_map(MAP).ok_or_else(|| XdpError::Object(format!("the XDP object has no map {MAP}")))?;
        let map = XskMap::try_from(map).map_err(|e| XdpError::Object(format!("{MAP} is not an XSKMAP: {e}")))?;
        Ok(Redirect { ebpf, map, interface: interface.to_string(), mode })
    }

    /// Sends the frames of queue `queue` to the AF_XDP socket `fd`.
    pub fn register(&mut self, queue: u32, fd: std::os::fd::RawFd) -> Result<(), XdpError> {
        self.map.set(queue, fd, 0).map_err(|e| XdpError::Register {
            interface: self.interface.clone(),
            queue,
            cause: e.to_string(),
        })
    }

    /// The program's handle, kept alive as long as the attachment should stay.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }
}

/// The XDP program attached to `interface`, as `ip -d link` shows it ("id 42 name xdp_prog"), if one is.
/// The error path only (it runs `ip`).
pub fn attached_program(interface: &str) -> Option<String> {
    let out = std::process::Command::new("ip").args(["-d", "-o", "link", "show", "dev", interface]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let at = words.iter().position(|w| w.starts_with("prog/xdp"))?;
    let id = words.get(at + 1..at + 3).filter(|w| w[0] == "id")?[1];
    let name = words.get(at + 3..at + 5).filter(|w| w[0] == "name").map(|w| w[1]);
    Some(match name {
        Some(n) => format!("id {id} name {n}"),
        None => format!("id {id}"),
    })
}

/// An error and its chain of causes, `: `-separated, with a hint where the cause is a lack of privileges.
fn causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    if s.contains("Operation not permitted") {
        s.push_str(" (loading XDP programs needs CAP_BPF and CAP_NET_ADMIN: run calxdp as root)");
    }
    s
}

#[cfg(test)]
mod tests {
    /// A second attachment to an interface another program holds is refused with the holder named (root:
    /// in a namespace of its own).
    #[test]
    #[ignore = "needs root (a network namespace of its own): scripts/test runs it with --include-ignored as root"]
    fn a_busy_interface_names_the_program_that_holds_it() {
        assert!(crate::sys::process::is_root(), "needs root");
        let ns = crate::sys::netns::TestNamespace::new("cxb");
        let ip = |args: &[&str]| std::process::Command::new("ip").args(args).status().unwrap().success();
        assert!(ip(&["-n", &ns.0, "link", "add", "xa", "type", "veth", "peer", "name", "xb"]));
        assert!(ip(&["-n", &ns.0, "link", "set", "xa", "up"]));
        let got = crate::sys::netns::run_in(&ns.0, || {
            let first = super::Redirect::attach("xa").map(|_r| ());
            let held = super::Redirect::attach("xa");
            let second = super::Redirect::attach("xa").map(|_| ());
            drop(held);
            (first, second)
        })
        .unwrap();
        drop(ns);
        assert!(got.0.is_ok(), "{:?}", got.0);
        let e = got.1.expect_err("the interface is held");
        assert!(matches!(&e, super::XdpError::Busy { interface, .. } if interface == "xa"), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("xa is busy: another XDP program, id "), "{e}");
        assert!(e.contains("name calxdp_redirect"), "{e}");
        assert!(!e.contains("run calxdp as root"), "{e}");
    }

    /// The committed object is what the committed source assembles to (where LLVM's assembler exists).
    #[test]
    fn committed_object_matches_source() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf");
        let out = std::env::temp_dir().join(format!("calxdp-redirect-{}.o", std::process::id()));
        let status = std::process::Command::new("llvm-mc")
            .args(["-triple", "bpfel", "-filetype=obj", "-o"])
            .arg(&out)
            .arg(dir.join("redirect.s"))
            .status();
        match status {
            Ok(s) if s.success() => {
                let built = std::fs::read(&out).unwrap();
                let _ = std::fs::remove_file(&out);
                assert!(built == super::REDIRECT_OBJECT, "bpf/redirect.o is stale: rebuild it from bpf/redirect.s");
            }
            _ => eprintln!("skipped: llvm-mc is not installed, so the committed object cannot be rebuilt to compare"),
        }
    }
}
