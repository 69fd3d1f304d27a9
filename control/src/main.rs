//! `calxdp`: a userspace AF_XDP dataplane that enforces Calico network policy with Linux Calico's verdicts.

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{Parser, Subcommand};

use calxdp::admin::proto::{Filter, Request};
use calxdp::admin::server::ServeOptions;

use calxdp::check::check_path;
use calxdp::live::LiveOptions;
use calxdp::parity::{self, Level};

#[derive(Parser, Debug)]
#[command(name = "calxdp", version, about = "Calico network policy on AF_XDP, with Linux Calico's verdicts")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate Calico / Kubernetes policy manifests (files or directories) and parity scenarios.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Replay a pcap capture through the pipeline offline (no root): each frame's verdict and why.
    Replay {
        /// The node: interfaces, pods, namespaces, services, Felix configuration.
        #[arg(long)]
        node: PathBuf,
        /// A policy file or a directory of them.
        #[arg(long)]
        policies: PathBuf,
        /// Write the frames that left, one pcap per output port, into this directory.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        capture: PathBuf,
    },
    /// Run the node dataplane (root): take over the node file's uplinks and pod veths with XDP and AF_XDP,
    /// join the host stack through a tap, and enforce the policies in DIR, reloaded when they change.
    Run {
        #[arg(long)]
        node: PathBuf,
        /// A directory of policy files, watched for changes.
        #[arg(long)]
        policies: PathBuf,
        /// Worker threads (each owns one queue of every interface).
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// The name of the host tap.
        #[arg(long, default_value = "calxdp-host")]
        tap: String,
        /// Print one line per frame: where it came in, the verdict, where it went, and why.
        #[arg(long)]
        trace: bool,
        /// The admin socket (root only) that `calxdp status`, `conntrack`, `rules`, `explain` and `trace` ask
        /// [default: /run/calxdp/admin.sock; in a network namespace other than PID 1's,
        /// /run/calxdp/admin-net<inode>.sock].
        #[arg(long)]
        admin: Option<PathBuf>,
        /// Do not serve the admin socket.
        #[arg(long)]
        no_admin: bool,
        /// Serve Prometheus metrics on this address (http://ADDR/metrics); off unless given.
        #[arg(long)]
        metrics: Option<SocketAddr>,
    },
    /// A node in network namespaces (root): sample policies, real traffic, a table of flows with the
    /// verdict and the deciding policy; then everything is torn down.
    Demo {
        /// Worker threads (each owns one queue of every interface; flows are handed to their owner).
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// After the table, print every frame the dataplane decided, with its verdict and why.
        #[arg(long)]
        trace: bool,
        /// After the table, keep the node running and serve the admin API until SIGINT or SIGTERM.
        #[arg(long)]
        keep: bool,
        /// With --keep: the admin socket [default: as for run].
        #[arg(long, requires = "keep")]
        admin: Option<PathBuf>,
        /// With --keep: serve Prometheus metrics on this address.
        #[arg(long, requires = "keep")]
        metrics: Option<SocketAddr>,
    },
    /// A running node's state: tables, last policy update, ports, workers, drops, conntrack.
    Status {
        #[command(flatten)]
        ask: Ask,
    },
    /// A running node's conntrack entries: list them or flush them.
    Conntrack {
        #[command(subcommand)]
        what: ConntrackWhat,
    },
    /// Every rule of a running node's tables with its hit counters (like `iptables -L -v`).
    Rules {
        #[command(flatten)]
        ask: Ask,
    },
    /// What a running node's tables decide for a new connection, stage by stage; no packet is sent.
    Explain {
        /// A pod (namespace/name) or an address, with an optional port (IP:PORT, [IPv6]:PORT).
        #[arg(long)]
        from: String,
        /// A pod (namespace/name) or an address, with port and protocol: IP:PORT/PROTO (tcp, udp, sctp,
        /// icmp or a number; ICMP without a port: IP/icmp).
        #[arg(long)]
        to: String,
        #[command(flatten)]
        ask: Ask,
    },
    /// The next N frames a running node decides, with every stage they went through.
    Trace {
        #[arg(long, default_value_t = 10)]
        count: u32,
        /// Seconds to wait for them (at most 60).
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        #[command(flatten)]
        ask: Ask,
    },
    /// Render the node as Linux Calico would program it.
    Render {
        #[command(subcommand)]
        what: RenderWhat,
    },
    /// Run parity scenarios and compare every verdict with Linux Calico's.
    /// Felix's external dataplane driver (set Felix's `DataplaneDriver` to a script that runs this): reads
    /// Felix's messages from fd 3, answers on fd 4, and runs the node they describe.
    FelixDriver {
        /// The node options Felix does not send (name, uplinks, services, `config:`), as `run --node`; also
        /// read from $CALXDP_NODE. Workloads in it are ignored: Felix sends the endpoints.
        #[arg(long, env = "CALXDP_NODE")]
        node: Option<PathBuf>,
        /// Read Felix's messages from this file instead of fd 3.
        #[arg(long = "in")]
        input: Option<PathBuf>,
        /// Write the messages to Felix to this file instead of fd 4.
        #[arg(long = "out")]
        output: Option<PathBuf>,
        #[arg(long, default_value_t = 1, env = "CALXDP_WORKERS")]
        workers: usize,
        #[arg(long, default_value = "calxdp-host", env = "CALXDP_TAP")]
        tap: String,
        /// Compile and publish every update but take over no interface (no root needed).
        #[arg(long)]
        check: bool,
        /// Seconds between the ProcessStatusUpdate messages to Felix.
        #[arg(long, default_value_t = 10.0)]
        status_every: f64,
        /// The admin socket, as `run --admin` (served once the node runs, not with --check).
        #[arg(long)]
        admin: Option<PathBuf>,
        /// Do not serve the admin socket.
        #[arg(long)]
        no_admin: bool,
        /// Serve Prometheus metrics on this address (http://ADDR/metrics); off unless given.
        #[arg(long)]
        metrics: Option<SocketAddr>,
    },
    Parity {
        #[arg(long, value_enum, default_value_t = LevelArg::Pipeline)]
        level: LevelArg,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

/// How to reach a running node and how to print its answer.
#[derive(clap::Args, Debug, Clone)]
struct Ask {
    /// The node's admin socket [default: /run/calxdp/admin.sock; in a network namespace other than PID 1's,
    /// /run/calxdp/admin-net<inode>.sock, as the node started there chose].
    #[arg(long)]
    admin: Option<PathBuf>,
    /// table | json
    #[arg(long, default_value = "table")]
    output: String,
}

/// Conntrack entries by their original direction.
#[derive(clap::Args, Debug, Clone)]
struct CtFilter {
    #[arg(long)]
    src: Option<IpAddr>,
    #[arg(long)]
    dst: Option<IpAddr>,
    /// tcp, udp, icmp, sctp or a protocol number.
    #[arg(long)]
    proto: Option<String>,
}

#[derive(Subcommand, Debug)]
enum ConntrackWhat {
    /// The entries (conntrack -L), optionally only those matching.
    List {
        #[command(flatten)]
        filter: CtFilter,
        #[command(flatten)]
        ask: Ask,
    },
    /// Deletes the entries matching (all without a filter), as conntrack -D / -F.
    Flush {
        #[command(flatten)]
        filter: CtFilter,
        #[command(flatten)]
        ask: Ask,
    },
}

#[derive(Subcommand, Debug)]
enum RenderWhat {
    /// Felix's iptables-legacy rendering of the node (raw, mangle, nat, filter; ipsets; kube-proxy's service
    /// NAT): prints `ipset restore` and `iptables-restore` input, or loads it into a network namespace.
    Iptables {
        /// The node: interfaces, pods, namespaces, services, Felix configuration.
        #[arg(long)]
        node: PathBuf,
        /// A policy file or a directory of them.
        #[arg(long)]
        policies: PathBuf,
        /// Load the rendering into this network namespace (root) instead of printing it.
        #[arg(long)]
        apply_in: Option<String>,
    },
}

/// `parity --level`: one level a scenario runs through, or all of them.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LevelArg {
    /// The reference evaluator.
    Reference,
    /// Compiled classifier programs walked in place of the reference's interpreter.
    Compiled,
    /// The production pipeline on frames.
    Pipeline,
    /// Real frames through XDP and AF_XDP in network namespaces (root).
    Live,
    /// Linux itself, programmed as Felix programs iptables (root).
    Kernel,
    /// The pipeline fed through Felix's driver protocol.
    Felix,
    /// Every level, those needing root last.
    All,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { paths } => {
            let mut failed = false;
            for p in &paths {
                match check_path(p) {
                    Ok(c) => {
                        for w in &c.warnings {
                            eprintln!("{w}");
                        }
                        println!("{}: ok ({} resources)", c.path.display(), c.resources);
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        failed = true;
                    }
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Replay { node, policies, out_dir, capture } => {
            let result = calxdp_policy::node::NodeConfig::load(&node)
                .map_err(calxdp::replay::ReplayError::from)
                .and_then(|n| calxdp::replay::replay(n, &policies, &capture));
            match result {
                Ok(r) => {
                    print!("{}", r.report);
                    if let Some(dir) = out_dir {
                        if let Err(e) = calxdp::replay::write_outputs(&dir, &r.out) {
                            eprintln!("calxdp replay: {e}");
                            return ExitCode::FAILURE;
                        }
                        println!("wrote {} output captures to {}", r.out.len(), dir.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("calxdp replay: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { node, policies, workers, tap, trace, admin, no_admin, metrics } => {
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
                    eprintln!("calxdp run: cannot handle signals: {e}");
                    return ExitCode::FAILURE;
                }
            }
            let opts = LiveOptions { workers, tap, ..LiveOptions::default() };
            let admin = admin.unwrap_or_else(calxdp::admin::default_socket);
            let serve = ServeOptions { admin: (!no_admin).then_some(admin), metrics };
            let result = calxdp::run::run_serving(&node, &policies, &opts, stop, trace, None, &serve);
            match result {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("calxdp run: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::FelixDriver { node, input, output, workers, tap, check, status_every, admin, no_admin, metrics } => {
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
                    eprintln!("calxdp felix-driver: cannot handle signals: {e}");
                    return ExitCode::FAILURE;
                }
            }
            let live = LiveOptions { workers, tap, ..LiveOptions::default() };
            if !(status_every > 0.0 && status_every.is_finite()) {
                eprintln!("calxdp felix-driver: --status-every must be a positive number of seconds");
                return ExitCode::from(2);
            }
            let status_every = std::time::Duration::from_secs_f64(status_every);
            let admin = admin.unwrap_or_else(calxdp::admin::default_socket);
            let serve = ServeOptions { admin: (!no_admin).then_some(admin), metrics };
            let opts = calxdp::felix::driver::DriverOptions { node, input, output, live, check, status_every, serve };
            match calxdp::felix::driver::run(&opts, stop) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("calxdp felix-driver: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { workers, trace, keep, admin, metrics } => match demo(workers, trace, keep, admin, metrics) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!("calxdp demo: some flows did not behave as Linux Calico would (marked NO)");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("calxdp demo: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Status { ask } => ask_node(&ask, Request::Status {}, 0),
        Command::Rules { ask } => ask_node(&ask, Request::Rules {}, 0),
        Command::Explain { from, to, ask } => ask_node(&ask, Request::Explain { from, to }, 0),
        Command::Trace { count, timeout, ask } => {
            let timeout = timeout.min(60);
            ask_node(&ask, Request::Trace { count, timeout_ms: Some(timeout * 1000) }, timeout)
        }
        Command::Conntrack { what } => {
            let (filter, ask, flush) = match what {
                ConntrackWhat::List { filter, ask } => (filter, ask, false),
                ConntrackWhat::Flush { filter, ask } => (filter, ask, true),
            };
            let protocol = match filter.proto.as_deref().map(parse_protocol) {
                None => None,
                Some(Ok(p)) => Some(p),
                Some(Err(e)) => {
                    eprintln!("calxdp conntrack: {e}");
                    return ExitCode::from(2);
                }
            };
            let filter = Filter { src: filter.src, dst: filter.dst, protocol };
            let req = if flush { Request::ConntrackFlush { filter } } else { Request::ConntrackList { filter } };
            ask_node(&ask, req, 0)
        }
        Command::Render { what: RenderWhat::Iptables { node, policies, apply_in } } => {
            match calxdp::render::render_files(&node, &policies, apply_in.as_deref()) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("calxdp render iptables: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Parity { level, paths } => {
            let levels = match level {
                LevelArg::Reference => vec![Level::Reference],
                LevelArg::Compiled => vec![Level::Compiled],
                LevelArg::Pipeline => vec![Level::Pipeline],
                LevelArg::Live => vec![Level::Live],
                LevelArg::Kernel => vec![Level::Kernel],
                LevelArg::Felix => vec![Level::Felix],
                LevelArg::All => Level::ALL.to_vec(),
            };
            match parity::run(&paths, &levels) {
                Ok((report, tally)) => {
                    print!("{report}");
                    if tally.failed == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("calxdp parity: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// `calxdp demo`, with `--keep` until SIGINT or SIGTERM.
fn demo(
    workers: usize,
    trace: bool,
    keep: bool,
    admin: Option<PathBuf>,
    metrics: Option<SocketAddr>,
) -> Result<bool, String> {
    if !keep {
        return calxdp::demo::demo(workers, trace).map_err(|e| e.to_string());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| format!("cannot handle signals: {e}"))?;
    }
    let serve = ServeOptions { admin: Some(admin.unwrap_or_else(calxdp::admin::default_socket)), metrics };
    calxdp::demo::demo_keep(workers, trace, Some(calxdp::demo::Keep { serve, stop })).map_err(|e| e.to_string())
}

/// A protocol by name or number.
fn parse_protocol(text: &str) -> Result<u8, String> {
    calxdp_policy::resource::Protocol::parse(text)
        .map(|p| p.0)
        .or_else(|| text.parse().ok())
        .ok_or_else(|| format!("unknown protocol '{text}' (tcp, udp, icmp, icmpv6, sctp or a number)"))
}

/// Asks the node on `ask.admin` and prints the answer as a table or as JSON. `wait`: seconds the answer may
/// take beyond the usual few.
fn ask_node(ask: &Ask, req: Request, wait: u64) -> ExitCode {
    let name = match &req {
        Request::Status {} => "status",
        Request::ConntrackList { .. } | Request::ConntrackFlush { .. } => "conntrack",
        Request::Rules {} => "rules",
        Request::Explain { .. } => "explain",
        Request::Trace { .. } => "trace",
    };
    let json = match ask.output.as_str() {
        "json" => true,
        "table" => false,
        other => {
            eprintln!("calxdp {name}: unknown --output '{other}' (table or json)");
            return ExitCode::from(2);
        }
    };
    let socket = ask.admin.clone().unwrap_or_else(calxdp::admin::default_socket);
    match calxdp::admin::client::ask(&socket, &req, Duration::from_secs(10 + wait)) {
        Ok(v) if json => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(v) => match calxdp::admin::client::render(&req, v) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("calxdp {name}: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("calxdp {name}: {e}");
            ExitCode::FAILURE
        }
    }
}
