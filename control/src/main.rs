//! `calxdp`: a userspace AF_XDP dataplane that enforces Calico network policy with Linux Calico's verdicts.

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};

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
    },
    Parity {
        /// reference | compiled | pipeline | live | kernel | felix | all
        #[arg(long, default_value = "pipeline")]
        level: String,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
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
            let result = calxdp::replay::load_node(&node).and_then(|n| calxdp::replay::replay(n, &policies, &capture));
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
        Command::Run { node, policies, workers, tap, trace } => {
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
                    eprintln!("calxdp run: cannot handle signals: {e}");
                    return ExitCode::FAILURE;
                }
            }
            let opts = LiveOptions { workers, tap, ..LiveOptions::default() };
            let result = calxdp::run::run(&node, &policies, &opts, stop, trace, None);
            match result {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("calxdp run: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::FelixDriver { node, input, output, workers, tap, check, status_every } => {
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
            let opts = calxdp::felix::driver::DriverOptions { node, input, output, live, check, status_every };
            match calxdp::felix::driver::run(&opts, stop) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("calxdp felix-driver: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { workers, trace } => match calxdp::demo::demo(workers, trace) {
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
            let Some(levels) = Level::parse(&level) else {
                eprintln!(
                    "calxdp parity: unknown level '{level}' (expected reference, compiled, pipeline, live, kernel, felix or all)"
                );
                return ExitCode::from(2);
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
